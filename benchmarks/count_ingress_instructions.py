"""Instructions per accepted-and-finished message: `routingd serve` against the bare aiohttp
handler, both counted by valgrind's callgrind under the same fixed load -- the ingress
benchmark's comparison as a figure the machine's load does not move (wrk's wall-clock ratio
moves by +-0.05 from minute to minute on this shared machine).

    .venv/bin/python benchmarks/count_ingress_instructions.py [--messages 1000] [--concurrency 16]

Each server runs under `valgrind --tool=callgrind --instr-atstart=no` (start-up is not counted).
A loopback client POSTs --warmup requests, the counters are zeroed (callgrind_control -z), it
POSTs --messages more with --concurrency in flight, waits until routingd has finished them
all (routingd_messages_inflight 0), and the counters are dumped. Counted: every thread of the
server process (routingd's event loop and its SQLite writer), not the client. The subject is
bench_ingress.py's (one fast sandbox provider), the baseline benchmarks/bare_server.py.
Prints both figures and baseline / routingd, the instruction-count counterpart of the
ingress ratio (the wall-clock one is lower: routingd also waits on fsync and on the GIL
handed between its two threads, and runs fewer instructions per cycle).
Needs valgrind (Debian: apt-get install valgrind); about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from common import BENCH, Helper, send_body, start_daemon, wait_drained
from bench_ingress import CONFIG

STARTUP_S = 240.0          # python + pydantic + aiohttp imports under valgrind


def _post_all(url: str, n: int, concurrency: int, body: str) -> None:
    async def main() -> None:
        todo = iter(range(n))
        async with aiohttp.ClientSession() as s:
            async def worker() -> None:
                for _ in todo:
                    async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        if r.status != 202:
                            raise SystemExit(f"count_ingress_instructions: {url} answered {r.status}")
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=600)
    asyncio.run(main())


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _total(out: Path) -> int:
    """The instruction total of the newest dump (`<out>.N`, written by callgrind_control -d)."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise SystemExit(f"count_ingress_instructions: no callgrind dump next to {out}")
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"count_ingress_instructions: no total in {dumps[-1]}")


def count(subject: str, work: Path, n: int, warmup: int, concurrency: int) -> float:
    out = work / f"{subject}.callgrind"
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    body = send_body()
    server: Any
    if subject == "routingd":
        server = start_daemon(work / subject, CONFIG, command_prefix=prefix, start_timeout=STARTUP_S)
    else:
        server = Helper([str(BENCH / "bare_server.py")], work, subject, start_timeout=STARTUP_S,
                        command_prefix=prefix)
    try:
        _control(server.pid, "-i", "on")
        _post_all(server.url + "/v1/send", warmup, concurrency, body)
        if subject == "routingd":
            wait_drained(server, 120)
        _control(server.pid, "-z")
        _post_all(server.url + "/v1/send", n, concurrency, body)
        if subject == "routingd":
            drained, _ = wait_drained(server, 300)
            if not drained:
                raise SystemExit("count_ingress_instructions: routingd did not finish the messages in 300 s")
        _control(server.pid, "-d")
        time.sleep(0.5)
        return _total(out) / n
    finally:
        server.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    if a.messages < 1 or a.warmup < 0 or a.concurrency < 1:
        p.error("--messages and --concurrency must be >= 1, --warmup >= 0")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"count_ingress_instructions: {tool} is not installed (Debian: apt-get install valgrind)",
                  file=sys.stderr)
            return 2
    got: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="routingd-cg-") as tmp:
        work = Path(tmp)
        (work / "routingd").mkdir()
        for subject in ("baseline", "routingd"):
            print(f"counting {subject}: {a.warmup} + {a.messages} messages ...", file=sys.stderr, flush=True)
            got[subject] = count(subject, work, a.messages, a.warmup, a.concurrency)
            print(f"  {subject:9s} {got[subject] / 1000:8.1f}k instructions per message", flush=True)
    print(f"  baseline / routingd = {got['baseline'] / got['routingd']:.3f} (in instructions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
