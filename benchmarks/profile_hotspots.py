"""Profile the daemon under the ingress load, or the simulator, and print the hot spots.

    python benchmarks/profile_hotspots.py daemon    [--tool cprofile|pyinstrument] [--duration 8] [--pg]
    python benchmarks/profile_hotspots.py simulator [--tool cprofile|pyinstrument]
    python benchmarks/profile_hotspots.py memory    [--messages 5000]

daemon: `routingd serve` (the ingress benchmark's config) runs under the profiler while wrk posts
/v1/send for --duration seconds; then the daemon drains and gets SIGTERM, and the profile of its
main (event loop) thread is printed. simulator: the simulator benchmark's scenario runs under the
profiler in this process. cProfile: the top functions by own time (tottime) with their share
of the total, and the project's functions by cumulative time (--pg: on the PostgreSQL store, a
fresh database of a throwaway cluster, workers = 1, as bench_ingress_pg.py); pyinstrument (a sampler, far less
overhead; needs `pip install pyinstrument` in the venv) is summarised the same way. memory: an in-process Router (real
SQLite store, the memory benchmark's hanging provider) takes --messages sends; tracemalloc
then attributes the bytes still held per pending message to the source lines that allocated
them. Output files land in --out (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (PYTHON, ROOT, BenchError, WrkSettings, run_wrk, send_body, start_daemon, wait_drained)


def print_cprofile(path: Path, top: int) -> None:
    st = pstats.Stats(str(path))
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{_short(file)}:{line}:{fn}"))
    print(f"\ntotal profiled time {total:.2f}s; top {top} by own time (tottime):")
    print(f"{'own%':>6} {'own s':>7} {'cum%':>6} {'calls':>9}  function")
    for tt, ct, nc, name in sorted(rows, reverse=True)[:top]:
        print(f"{tt / total:6.1%} {tt:7.2f} {ct / total:6.1%} {nc:9d}  {name}")
    print(f"\ntop {top} project functions by cumulative time:")
    proj = [r for r in rows if ("daemon/" in r[3] or "simulator/" in r[3]) and "site-packages" not in r[3]]
    for tt, ct, nc, name in sorted(proj, key=lambda r: r[1], reverse=True)[:top]:
        print(f"{tt / total:6.1%} {tt:7.2f} {ct / total:6.1%} {nc:9d}  {name}")


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def profiler_prefix(tool: str, out: Path) -> list[str]:
    if tool == "cprofile":
        return [PYTHON, "-m", "cProfile", "-o", str(out)]
    if shutil.which("pyinstrument", path=str(Path(PYTHON).parent)) is None:
        raise BenchError("pyinstrument is not installed in this venv: .venv/bin/pip install pyinstrument")
    return [str(Path(PYTHON).parent / "pyinstrument"), "-i", "0.0005", "-o", str(out), "-r", "pstats"]


def profile_daemon(tool: str, duration: int, out_dir: Path, top: int, pg: bool = False) -> None:
    if pg:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_cluster import PgCluster

        with PgCluster() as cluster:
            _profile_daemon(tool, duration, out_dir, top, cluster.new_database())
    else:
        _profile_daemon(tool, duration, out_dir, top, None)


def _profile_daemon(tool: str, duration: int, out_dir: Path, top: int, store: str | None) -> None:
    from bench_ingress import CONFIG

    out = out_dir / f"daemon-{tool}.prof"
    env = {"ROUTINGD_LOG_LEVEL": "WARNING"}
    if store is not None:
        env["ROUTINGD_STORE"] = store
    d = start_daemon(out_dir / "daemon", CONFIG, env=env, command_prefix=profiler_prefix(tool, out))
    try:
        r = run_wrk(d.url + "/v1/send", WrkSettings(duration_s=duration), send_body())
        wait_drained(d, 60)
        print(f"under the profiler: {r.accepted_per_s:.0f} req/s accepted (p50 {r.p50_s * 1000:.1f}ms)")
        d.stop(timeout=60)
    finally:
        d.close()
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    print_cprofile(out, top)
    print(f"\nprofile: {out} (pstats format: python -m pstats {out})")


def profile_simulator(tool: str, out_dir: Path, top: int) -> None:
    from bench_simulator import make_setup, DEFAULT_RATE, DEFAULT_SIM_S
    from routingd.simulator.runner import run

    setup = make_setup(out_dir, DEFAULT_RATE, DEFAULT_SIM_S)
    if tool == "cprofile":
        import cProfile

        out = out_dir / "simulator.prof"
        prof = cProfile.Profile()
        prof.runcall(run, setup)
        prof.dump_stats(str(out))
        print_cprofile(out, top)
    else:
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005)
        prof.start()
        run(setup)
        prof.stop()
        from pyinstrument.renderers import PstatsRenderer

        out = out_dir / "simulator-pyinstrument.prof"
        text = prof.output(PstatsRenderer())     # marshal bytes decoded with surrogateescape
        out.write_bytes(text.encode("utf-8", "surrogateescape"))
        print_cprofile(out, top)
    print(f"\nprofile: {out}")


def profile_memory(messages: int, out_dir: Path, top: int) -> None:
    import asyncio
    import gc
    import tracemalloc

    from bench_memory import CONFIG
    from routingd.daemon.core.policy import parse_policy
    from routingd.daemon.core.request import SendRequest
    from routingd.daemon.metrics import Metrics
    from routingd.daemon.runtime import Router
    from routingd.daemon.store import Store

    async def go() -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot, int]:
        policy = parse_policy(CONFIG.format(limit=messages * 2), "routing.toml", env={})
        router = Router(policy, Store(str(out_dir / "state.db")), Metrics(), rng_seed=1)
        await router.start()
        req = SendRequest.model_validate_json(send_body())
        for _ in range(50):                      # warm caches before the first snapshot
            await router.submit(SendRequest.model_validate_json(send_body()))
        await router.store.flush()
        gc.collect()
        before = tracemalloc.take_snapshot()
        batch = 200
        for i in range(0, messages, batch):
            await asyncio.gather(*(router.submit(SendRequest.model_validate_json(send_body()))
                                   for _ in range(min(batch, messages - i))))
        await router.store.flush()
        await asyncio.sleep(0.2)
        gc.collect()
        after = tracemalloc.take_snapshot()
        n = router.inflight - 50
        del req
        await router.stop(0)
        return before, after, n

    tracemalloc.start(1)
    before, after, n = asyncio.run(go())
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{n} pending messages hold {total / n:.0f} bytes each (Python allocations, tracemalloc)")
    print(f"{'bytes/msg':>9} {'share':>6}  allocated at")
    for s in stats[:top]:
        fr = s.traceback[0]
        print(f"{s.size_diff / n:9.0f} {s.size_diff / total:6.1%}  {_short(fr.filename)}:{fr.lineno}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("target", choices=["daemon", "simulator", "memory"])
    p.add_argument("--messages", type=int, default=5000, help="memory: pending messages (default 5000)")
    p.add_argument("--tool", choices=["cprofile", "pyinstrument"], default="cprofile")
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path)
    p.add_argument("--pg", action="store_true", help="daemon: on the PostgreSQL store (a throwaway cluster)")
    a = p.parse_args()
    out_dir = a.out or Path(tempfile.mkdtemp(prefix="routingd-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if a.target == "daemon":
            profile_daemon(a.tool, a.duration, out_dir, a.top, a.pg)
        elif a.target == "simulator":
            profile_simulator(a.tool, out_dir, a.top)
        else:
            profile_memory(a.messages, out_dir, a.top)
    except BenchError as e:
        print(f"profile_hotspots: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
