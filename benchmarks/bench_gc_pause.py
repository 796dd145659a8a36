"""The event loop's longest stand-still from the cyclic garbage collector: a full collection
(daemon/ids.py freeze_startup).

A full collection walks every tracked object while nothing else runs on the loop. Subject: a
process that freezes what its start built (modules, classes, the policy, the app), as
`routingd serve` does, then routes MESSAGES messages through two sandbox providers (so that
2,048 finished ones are kept, as in a long-running daemon), then times full collections.
Baseline, same run: the same process without the freeze. Each side is a fresh interpreter
(a freeze cannot be undone for the objects it moved). The verdict is subject / baseline.

    .venv/bin/python benchmarks/bench_gc_pause.py
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, BenchResult, header, ratio  # noqa: E402

MESSAGES = 5_000
COLLECTIONS = 7
TARGET = 0.75           # a full collection with the start frozen <= 0.75 x without

POLICY = """version = 1
[timeouts]
provider = "2s"
[providers.s1]
type = "sandbox"
latency = "1ms"
error_rate = 0.3
retries = 1
[providers.s2]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["s1", "s2"]
[routes.default]
channels = ["email"]
"""


def _side(freeze: bool, recent: int | None) -> dict[str, float]:
    """One side, in this (fresh) process: the daemon's modules and app, the freeze or not,
    MESSAGES routed (with `recent` finished ones kept instead of runtime/router.py _RECENT,
    if given), then COLLECTIONS full collections timed."""
    from aiohttp import web

    from routingd.daemon.runtime import router as router_module

    from routingd.daemon import service  # noqa: F401 - what `serve` imports
    from routingd.daemon.core.policy import parse_policy
    from routingd.daemon.core.request import SendRequest
    from routingd.daemon.ids import freeze_startup
    from routingd.daemon.metrics import Metrics
    from routingd.daemon.runtime import Router
    from routingd.daemon.store import Store

    if recent is not None:
        router_module._RECENT = recent

    async def main() -> dict[str, float]:
        policy = parse_policy(POLICY, "routing.toml", env={})
        router = Router(policy, Store(str(Path(tempfile.mkdtemp()) / "state.db")), Metrics(), rng_seed=7)
        app = web.Application()     # noqa: F841 - part of what a start builds
        if freeze:
            freeze_startup()
        await router.start()
        try:
            req = SendRequest.model_validate({"message": {"to": {"email": "a@example.com"},
                                                          "content": {"title": "t", "body": "b"}}})
            ids = []
            for i in range(MESSAGES):
                ids.append((await router.submit(req)).message_id)
                if i % 100 == 99:
                    await asyncio.sleep(0.005)
            for _ in range(2000):       # bounded: every message finishes within its timeouts
                if all(router.status(m)["status"] != "pending" for m in ids[-50:]):
                    break
                await asyncio.sleep(0.01)
            pauses = []
            for _ in range(COLLECTIONS):
                t0 = time.perf_counter()
                gc.collect()
                pauses.append(time.perf_counter() - t0)
            return {"median_ms": statistics.median(pauses) * 1000, "min_ms": min(pauses) * 1000,
                    "tracked": float(len(gc.get_objects())), "frozen": float(gc.get_freeze_count())}
        finally:
            await router.stop(0.0)

    return asyncio.run(main())


def _run_side(freeze: bool, recent: int | None = None) -> dict[str, float]:
    p = subprocess.run([PYTHON, __file__, "--side", "freeze" if freeze else "plain", str(recent or 0)],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"side {'freeze' if freeze else 'plain'} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run() -> BenchResult:
    header("gc pause: a full collection with the start frozen (daemon/ids.py freeze_startup)")
    res = BenchResult("gc_pause")
    t0 = time.perf_counter()
    # alternate the sides, twice each: the machine is shared, the best of each counts
    plain = min((_run_side(False) for _ in range(2)), key=lambda r: r["median_ms"])
    frozen = min((_run_side(True) for _ in range(2)), key=lambda r: r["median_ms"])
    old_bound = _run_side(True, 2048)       # info: the 2,048 finished messages kept before
    for name, r in (("without the freeze", plain), ("start frozen", frozen), ("frozen, 2,048 kept", old_bound)):
        res.say(f"{name:>19}: full collection median {r['median_ms']:6.1f} ms (min {r['min_ms']:.1f}), "
                f"{int(r['tracked']):,} objects tracked, {int(r['frozen']):,} frozen")
        res.figures[name.replace(" ", "_")] = r
    res.wall_s = time.perf_counter() - t0
    res.check("full collection, start frozen / without", ratio(frozen["median_ms"], plain["median_ms"]),
              TARGET, at_least=False)
    return res


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--side":
        print(json.dumps(_side(sys.argv[2] == "freeze", int(sys.argv[3]) or None)))
        sys.exit(0)
    r = run()
    sys.exit(0 if r.ok else 1)
