"""Run the routingd benchmarks (each prints its subject, its baseline, the ratio and PASS/FAIL).

    python benchmarks/run_all.py                       # all of them (what `make bench` runs)
    python benchmarks/run_all.py --only simulator,failover
    python benchmarks/run_all.py --skip memory --duration 15 --json results.json

Benchmarks: ingress (wrk vs a bare aiohttp handler), delivery (through a local HTTP sink vs a
bare relay), simulator (vs a bare SimPy loop, plus every shipped drill's wall time), failover
(breaker on/off vs the floor, simulated), memory (RSS with N pending messages vs idle), rate_limit
(a 2,000 burst into a daemon whose provider enforces a token bucket at routingd's rate_limit),
gc_pause (a full garbage collection with the daemon's start frozen vs without).
Exit status: 0 every target met, 1 a target missed, 2 a benchmark could not run.
See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, BenchResult, WrkSettings  # noqa: E402

NAMES = ("ingress", "delivery", "simulator", "failover", "memory", "worst_plan", "rate_limit", "limiter", "gc_pause")


def runners(a: argparse.Namespace) -> dict[str, Callable[[], BenchResult]]:
    wrk = WrkSettings(threads=a.threads, connections=a.connections, duration_s=a.duration)

    def ingress() -> BenchResult:
        import bench_ingress
        return bench_ingress.run(wrk, a.rounds)

    def delivery() -> BenchResult:
        import bench_delivery
        return bench_delivery.run(wrk, count=a.paced_count, rate=a.paced_rate)

    def simulator() -> BenchResult:
        import bench_simulator
        return bench_simulator.run(a.sim_rate, a.sim_seconds, a.repeat, drills=not a.no_drills)

    def failover() -> BenchResult:
        import bench_failover
        return bench_failover.run()

    def memory() -> BenchResult:
        import bench_memory
        return bench_memory.run(a.messages, a.memory_timeout)

    def worst_plan() -> BenchResult:
        import bench_worst_plan
        return bench_worst_plan.run()

    def rate_limit() -> BenchResult:
        import bench_rate_limit
        return bench_rate_limit.run()

    def limiter() -> BenchResult:
        import bench_limiter
        return bench_limiter.run()

    def gc_pause() -> BenchResult:
        import bench_gc_pause
        return bench_gc_pause.run()

    return {"ingress": ingress, "delivery": delivery, "simulator": simulator, "failover": failover,
            "memory": memory, "worst_plan": worst_plan, "rate_limit": rate_limit, "limiter": limiter,
            "gc_pause": gc_pause}


def _names(value: str) -> list[str]:
    out = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in out if n not in NAMES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(bad)}; known: {', '.join(NAMES)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", type=_names, help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--skip", type=_names, default=[], help="comma-separated benchmarks to leave out")
    p.add_argument("--json", metavar="PATH", help="also write every figure and verdict as JSON")
    g = p.add_argument_group("ingress and delivery (wrk)")
    g.add_argument("--duration", type=int, default=8, help="wrk seconds per side (default 8)")
    g.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    g.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    g.add_argument("--rounds", type=int, default=2, help="ingress: alternating rounds, best counts (default 2)")
    g.add_argument("--paced-count", type=int, default=300, help="delivery overhead: messages (default 300)")
    g.add_argument("--paced-rate", type=float, default=100.0, help="delivery overhead: msg/s (default 100)")
    g = p.add_argument_group("simulator")
    g.add_argument("--sim-rate", type=float, default=200.0, help="arrivals per second (default 200)")
    g.add_argument("--sim-seconds", type=float, default=300.0, help="simulated seconds (default 300)")
    g.add_argument("--repeat", type=int, default=2, help="runs per side, fastest counts (default 2)")
    g.add_argument("--no-drills", action="store_true", help="skip the shipped drills' wall times")
    g = p.add_argument_group("memory")
    g.add_argument("--messages", type=int, default=100_000, help="pending messages (default 100000)")
    g.add_argument("--memory-timeout", type=float, default=180.0, help="load time limit in s (default 180)")
    a = p.parse_args(argv)

    selected = [n for n in (a.only or NAMES) if n not in a.skip]
    table = runners(a)
    results: list[BenchResult] = []
    broken: list[str] = []
    t0 = time.monotonic()
    for name in selected:
        try:
            results.append(table[name]())
        except BenchError as e:
            print(f"\n{name}: could not run: {e}", file=sys.stderr, flush=True)
            broken.append(name)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"\n{name}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            traceback.print_exc(limit=3, file=sys.stderr)
            broken.append(name)
    total = time.monotonic() - t0

    print("\n== summary")
    for r in results:
        for c in r.checks:
            shown = "-" if c.actual is None else f"{c.actual:.3f}"
            print(f"  {c.verdict:4s}  {r.name:10s} {c.name} = {shown} (target {c.target})")
        print(f"        {r.name:10s} wall {r.wall_s:.1f}s")
    for name in broken:
        print(f"  ERR   {name:10s} could not run (see above)")
    print(f"  total wall time {total:.1f}s")
    if a.json:
        Path(a.json).write_text(json.dumps({"total_wall_s": round(total, 1), "broken": broken,
                                            "results": [r.to_json() for r in results]}, indent=2) + "\n")
    if broken:
        return 2
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
