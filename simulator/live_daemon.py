"""The daemon under test of `simulate --live` (simulator/live.py) and of its calibration
(live_calibrate.py): `routingd serve` started on a free loopback port with its own temporary state
directory, and stopped; `LiveError` when a live run cannot be made; `_ts`, a status timestamp
read back as seconds; `read_finished`, the messages' final statuses read back.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

STARTUP_RE = re.compile(r"listening on (http://\S+)")
TERMINAL = ("delivered", "undeliverable", "expired")


class LiveError(Exception):
    """The live run could not be made (the daemon did not start, a send was refused, ...)."""


def _ts(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def read_finished(http: Any, ids: list[str], within_s: float, pause_s: float) -> dict[str, dict[str, Any]]:
    """GET /v1/messages/{id} (32 at a time, `http` an aiohttp session on the daemon) for each of
    `ids` until every one is terminal or `within_s` has passed, `pause_s` between rounds: the
    terminal ones' status documents, by message id."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    docs: dict[str, dict[str, Any]] = {}
    sem = asyncio.Semaphore(32)

    async def fetch(mid: str) -> None:
        async with sem:
            async with http.get(f"/v1/messages/{mid}") as r:
                if r.status == 200:
                    doc = await r.json()
                    if doc["status"] in TERMINAL:
                        docs[mid] = doc

    while True:
        todo = [mid for mid in ids if mid not in docs]
        if not todo:
            break
        await asyncio.gather(*(fetch(mid) for mid in todo))
        if len(docs) == len(ids) or loop.time() > deadline:
            break
        await asyncio.sleep(pause_s)
    return docs


class _Daemon:
    """`routingd serve` on a free loopback port with its own state directory."""

    def __init__(self, workdir: str, config: str) -> None:
        self.workdir = workdir
        self.config = config
        self.log_path = os.path.join(workdir, "routingd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "routingd.daemon.cli", "serve", "--config", self.config,
               "--listen", "127.0.0.1:0", "--state", os.path.join(self.workdir, "state.db"), "--log-level", "WARNING"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.url:
            m = STARTUP_RE.search(self.log())
            if m:
                self.url = m.group(1).rstrip("/")
            elif self.proc.poll() is not None:
                raise LiveError(f"routingd exited with {self.proc.returncode} before listening:\n{self.log()[-2000:]}")
            elif time.monotonic() > deadline:
                raise LiveError(f"routingd printed no startup line within {timeout:g}s:\n{self.log()[-2000:]}")
            else:
                time.sleep(0.02)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5.0)
