"""A real `routingd serve` subprocess for integration tests.

    with DaemonProcess(tmp_path, ROUTING_TOML) as d:       # starts, waits for /readyz
        mid = d.send({"to": {"email": "a@example.com"}})    # POST /v1/send -> message_id
        d.wait_status(mid, "delivered")
        assert d.stop() == 0                                # SIGTERM, waits for the exit code

The daemon listens on 127.0.0.1 port 0 (the kernel picks a free port, so parallel tests never
race for one); the URL is read from its startup line ("listening on http://..."). Its stderr
goes to a log file in the work directory (`log_text()`), so a chatty daemon never blocks on a
full pipe. ROUTINGD_* variables of the test environment are not inherited: pass `env=`.
Every wait is bounded; `close()` (also on `__exit__`) SIGKILLs whatever is still running.

Shared by the integration tests: `serving(d)` (a module fixture's start / clean stop / no
Traceback), `StandinLoop` (provider stand-ins for synchronous tests; the `standins` fixture of
tests/conftest.py), `free_port()`, `wait_until()` (and `until()` on a loop), `run_bounded()` and `ts()`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

STARTUP_RE = re.compile(r"listening on (http://\S+)")
TERMINAL = ("delivered", "undeliverable", "expired")

# One http provider, `slow`, at a stand-in's {url}; {grace}: the daemon's drain grace. The daemon
# lifecycle tests run it on the SQLite store (test_daemon_process.py) and on PostgreSQL
# (test_postgres_daemon.py).
SLOW_CONFIG = """
version = 1
[daemon]
grace = "{grace}"
[timeouts]
provider = "5s"
channel = "20s"
message = "60s"
[providers.slow]
type = "http"
url = "{url}"
[channels.email]
providers = ["slow"]
[routes.default]
channels = ["email"]
"""


class DaemonError(AssertionError):
    """The daemon did not start, answer or stop as expected; the message holds its log tail."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound, then closed: nothing listens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(value: str) -> float:
    """RFC 3339 (as the status endpoint writes it) -> epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_bounded(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    """asyncio.run(coro), cancelled (TimeoutError) after `timeout` seconds: no test hangs on a loop."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `cond()` on the running loop every 10 ms until it is truthy; AssertionError after
    `timeout` seconds (the async twin of wait_until, for conditions the loop itself changes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check()` every 50 ms until it is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def routingd_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m routingd.daemon.cli`."""
    script = Path(sys.executable).with_name("routingd")
    if script.exists():
        return [str(script)]
    found = shutil.which("routingd")
    return [found] if found else [sys.executable, "-m", "routingd.daemon.cli"]


@dataclass
class DaemonProcess:
    workdir: Path
    config_text: str | None = None          # written to workdir/routing.toml (None: keep the file)
    state_path: Path | None = None          # default: workdir/state.db
    token: str | None = None                # sent as "Authorization: Bearer <token>" by default
    env: Mapping[str, str] = field(default_factory=dict)
    args: Iterable[str] = ()                # extra `routingd serve` arguments
    listen: str = "127.0.0.1:0"
    start_timeout: float = 20.0

    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    url: str = field(default="", init=False)
    starts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "routing.toml"
        self.state_path = Path(self.state_path) if self.state_path else self.workdir / "state.db"
        if self.config_text is not None:
            self.write_config(self.config_text)

    # ------------------------------------------------------------------ process

    @property
    def log_path(self) -> Path:
        return self.workdir / f"routingd-{self.starts}.log"

    def write_config(self, text: str) -> None:
        """Replace routing.toml atomically (write a temp file, rename), as editors do."""
        tmp = self.config_path.with_suffix(".toml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def command(self) -> list[str]:
        return [*routingd_command(), "serve", "--config", str(self.config_path), "--listen", self.listen,
                "--state", str(self.state_path), *self.args]

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it (see start())."""
        if self.running:
            raise DaemonError("the daemon is already running")
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.url = ""
        return self.proc

    def start(self) -> "DaemonProcess":
        """Start `routingd serve` and wait until /readyz answers 200."""
        self.spawn()
        deadline = time.monotonic() + self.start_timeout
        while not self.url:
            m = STARTUP_RE.search(self.log_text())
            if m:
                self.url = m.group(1)
                break
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(f"routingd exited with {self.proc.returncode} before listening:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise DaemonError(f"routingd printed no startup line within {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        while True:
            try:
                if self.get("/readyz", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise DaemonError(f"/readyz not 200 within {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def restart(self) -> "DaemonProcess":
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None and self.running, "the daemon is not running"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"routingd did not exit within {timeout}s:\n{self.log_tail()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` (SIGTERM) and wait for the exit code."""
        if not self.running:
            assert self.proc is not None, "the daemon was never started"
            return self.proc.returncode
        self.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> int:
        """SIGKILL: no clean-up at all (a crash)."""
        return self.stop(signal.SIGKILL, timeout=10)

    def close(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, json_body: Any = None, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, token: str | None | bool = True,
                timeout: float = 10.0) -> Response:
        """One HTTP request; token=True sends self.token, a string sends that, False/None none."""
        if not self.url:
            raise DaemonError("the daemon is not started")
        u = urlsplit(self.url)
        hdrs = dict(headers or {})
        tok = self.token if token is True else (token or None)
        if tok:
            hdrs.setdefault("Authorization", f"Bearer {tok}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, json_body=json_body, **kw)

    def send(self, message: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        """POST /v1/send {"message": message}; asserts 202 and returns the message_id."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = self.post("/v1/send", {"message": dict(message)}, headers=headers)
        if r.status != 202:
            raise DaemonError(f"POST /v1/send answered {r.status}: {r.body!r}")
        return r.json()["message_id"]

    def status(self, message_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/messages/{message_id}")
        if r.status != 200:
            raise DaemonError(f"GET /v1/messages/{message_id} answered {r.status}: {r.body!r}")
        return r.json()

    def wait_status(self, message_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
        """Poll until the message's status is one of `statuses` (default: any terminal one)."""
        want = statuses or TERMINAL
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status(message_id)
            if last.get("status") in want:
                return last
            if last.get("status") in TERMINAL:
                raise DaemonError(f"message {message_id} ended {last.get('status')}, wanted {want}: "
                                  f"{json.dumps(last)}")
            time.sleep(0.05)
        raise DaemonError(f"message {message_id} not {want} within {timeout}s: {json.dumps(last)}")

    def metrics_text(self) -> str:
        return self.get("/metrics").body.decode()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample in /metrics (labels must match exactly), or None."""
        want = ""
        if labels:
            want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        for line in self.metrics_text().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == name + want or (not labels and key == name):
                return float(value)
            if labels and key.startswith(name + "{"):
                got = dict(re.findall(r'(\w+)="([^"]*)"', key[len(name):]))
                if got == dict(labels):
                    return float(value)
        return None


@contextmanager
def serving(d: DaemonProcess) -> Iterator[DaemonProcess]:
    """Start `d` and yield it; afterwards it must stop cleanly (SIGTERM, exit 0) and its log must
    hold no Traceback. For module fixtures that share one daemon between tests."""
    with d:
        yield d
        assert d.stop() == 0, d.log_tail()
    assert "Traceback" not in d.log_text(), d.log_tail()


# --------------------------------------------------------------------------- stand-ins for sync tests


class StandinLoop:
    """An event loop on a background thread hosting provider stand-ins for synchronous tests.

        loop = StandinLoop()
        s = loop.standin([{"status": 503}])           # a started tests/provider_standin.ProviderStandin
        loop.call(s.wait_for(1, finished=True))       # run any coroutine on that loop, bounded
        loop.close()                                  # closes every stand-in, stops the thread

    or `with StandinLoop() as loop:`. A test thread may block (HTTP to the daemon, sleeps) while
    the stand-ins keep answering.
    """

    def __init__(self) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="standins", daemon=True)
        self._thread.start()
        self.standins: list[Any] = []

    def call(self, coro: Any, timeout: float = 20.0) -> Any:
        fut = self._asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def standin(self, script: Any = None, **kw: Any) -> Any:
        from provider_standin import ProviderStandin

        async def make() -> Any:
            return await ProviderStandin(script, **kw).start()

        s = self.call(make())
        self.standins.append(s)
        return s

    def close(self) -> None:
        async def close_all() -> None:
            for s in self.standins:
                await s.close()

        try:
            self.call(close_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> "StandinLoop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
