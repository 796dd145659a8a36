"""Simulator: a day of traffic at 100 msg/s (8.64 M messages) through the primary-hang drill.

Subject: routingd.simulator.runner.run() + build_report() on the shipped email-primary-hang drill
with its duration set to --minutes (default 10 simulated minutes, the slice) and its rate to
--rate (default 100/s), the outage where the drill has it; then the same at 4 x the duration, to
show that memory does not grow with the message count; `--day` then runs the full 24 hours.
Each span runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
Baseline: the bare SimPy loop of bench_simulator.py (Poisson arrivals at the same rate for the
slice's simulated time, one SimPy process per message with one timed attempt), measured in the
same sitting; the ratio is simulator msg/s / bare loop msg/s.
Target (issue 20): the day in under 2 minutes (72,000 msg/s), memory that does not grow with
the message count. Printed: msg/s, the ratio, the time a day would take at the slice's rate;
each per wall-second and per CPU-second of the process (time.process_time): on this shared
machine other work can take most of the cores, and the CPU figure is what the run costs with
a core to itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench_simulator import bare_simpy
from common import header

from routingd.daemon.core import core_build
from routingd.daemon.core.behaviour import LatencyDist

DAY_S = 86_400.0
TARGET_DAY_S = 120.0

CHILD = r"""
import json, resource, sys, time
from routingd.daemon.config_files import load_policy
from routingd.simulator.cli import shipped_drills
from routingd.simulator.report import build_report
from routingd.simulator.runner import run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario
import dataclasses
seconds, rate = float(sys.argv[1]), float(sys.argv[2])
sc = load_scenario(shipped_drills()["email-primary-hang"])
model = sc.model.model_copy(update={"duration": int(seconds * 1000),
                                    "traffic": sc.model.traffic.model_copy(update={"rate": rate})})
sc = dataclasses.replace(sc, model=model)
setup = bind_scenario(sc, load_policy(sc.routing_path))
t0, c0 = time.perf_counter(), time.process_time()
rep = build_report(run(setup))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"messages": rep["messages"], "wall_s": wall, "cpu_s": cpu,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "ok": rep["ok"], "violations": rep["violations"], "p99": rep["time_to_deliver_s"]["p99"],
                  "route_around": [o["time_to_route_around_s"] for o in rep["outages"]]}))
"""


def one(seconds: float, rate: float, timeout: float) -> dict[str, float] | None:
    """One span in a fresh interpreter; None when it took longer than `timeout`."""
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(seconds), str(rate)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        raise SystemExit(f"the run failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bare_rate(rate: float, seconds: float) -> tuple[float, float]:
    """The bare SimPy loop's messages per wall-second and per CPU-second over the slice (best of two)."""
    from routingd.daemon.config_files import load_policy
    from routingd.simulator.cli import shipped_drills
    from routingd.simulator.scenario import load_scenario
    from routingd.simulator.setup import bind_scenario

    sc = load_scenario(shipped_drills()["email-primary-hang"])
    latency: LatencyDist = bind_scenario(sc, load_policy(sc.routing_path)).specs["ses"].latency
    best, best_cpu = 0.0, 0.0
    for _ in range(2):
        c0 = time.process_time()
        n, wall = bare_simpy(rate, seconds, sc.model.seed, latency, "process")
        best, best_cpu = max(best, n / wall), max(best_cpu, n / (time.process_time() - c0))
    return best, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of the slice (default 10)")
    ap.add_argument("--rate", type=float, default=100.0, help="arrivals per second (default 100)")
    ap.add_argument("--day", action="store_true", help="also run the full 24 hours (8.64 M messages at 100/s)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up a span after this many seconds")
    args = ap.parse_args()
    header(f"simulator: a day of traffic through email-primary-hang at {args.rate:g} msg/s; core {core_build()}")
    slice_s = args.minutes * 60.0
    spans = [slice_s, 4 * slice_s] + ([DAY_S] if args.day else [])
    base, base_cpu = bare_rate(args.rate, slice_s)
    print(f"bare SimPy loop (process per message): {base:9.0f} msg/wall-s, {base_cpu:9.0f} msg/CPU-s")
    first: dict[str, float] | None = None
    for s in spans:
        t0 = time.perf_counter()
        r = one(s, args.rate, args.timeout)
        if r is None:
            print(f"{s / 3600:8.3f} h: gave up after {time.perf_counter() - t0:.0f} s")
            break
        rate, cpu_rate = r["messages"] / r["wall_s"], r["messages"] / r["cpu_s"]
        line = (f"{s / 3600:8.3f} h  {r['messages']:>9,d} msgs  wall {r['wall_s']:7.1f} s {rate:7.0f} msg/s "
                f"({rate / base:.3f} x bare SimPy)  CPU {r['cpu_s']:7.1f} s {cpu_rate:7.0f} msg/s "
                f"({cpu_rate / base_cpu:.3f} x)  peak RSS {r['peak_rss_kib'] / 1024:7.1f} MiB")
        if first is not None:
            grow = (r["peak_rss_kib"] - first["peak_rss_kib"]) * 1024 / max(1, r["messages"] - first["messages"])
            line += f" ({grow:+.1f} B/msg vs the slice)"
        line += f"  violations {r['violations']}, expect {'ok' if r['ok'] else 'MISSED'}"
        print(line, flush=True)
        if first is None:
            first = r
            day_msgs = DAY_S * args.rate
            print(f"  extrapolated to a day ({day_msgs:,.0f} messages): wall {r['wall_s'] * day_msgs / r['messages']:.0f} s, "
                  f"CPU {r['cpu_s'] * day_msgs / r['messages']:.0f} s (target {TARGET_DAY_S:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
