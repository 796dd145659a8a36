"""Simulator: a day of traffic at 100 msg/s (8.64 M messages) through the primary-hang drill.

Subject: routingd.simulator.runner.run() + build_report() on the shipped email-primary-hang drill
with its duration set to --hours (default 24) and its rate to --rate (default 100/s), the outage
where the drill has it. Each size runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its
own. Before the full day it runs --steps shorter spans (a doubling series ending at --hours), so
that growth with the message count shows as bytes per message between consecutive spans, and
the full day's time can be judged against a series that finished.
Target (issue 20): the day in under 2 minutes, memory that does not grow with the message count.
Baseline: none besides the series itself (same run, smaller spans).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import header

CHILD = r"""
import json, resource, sys, time
from routingd.daemon.config_files import load_policy
from routingd.simulator.cli import shipped_drills
from routingd.simulator.report import build_report
from routingd.simulator.runner import run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario
import dataclasses
hours, rate = float(sys.argv[1]), float(sys.argv[2])
sc = load_scenario(shipped_drills()["email-primary-hang"])
model = sc.model.model_copy(update={"duration": int(hours * 3_600_000),
                                    "traffic": sc.model.traffic.model_copy(update={"rate": rate})})
sc = dataclasses.replace(sc, model=model)
setup = bind_scenario(sc, load_policy(sc.routing_path))
t0 = time.perf_counter()
rep = build_report(run(setup))
wall = time.perf_counter() - t0
print(json.dumps({"messages": rep["messages"], "wall_s": wall,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "ok": rep["ok"], "p99": rep["time_to_deliver_s"]["p99"]}))
"""


def one(hours: float, rate: float, timeout: float) -> dict[str, float] | None:
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(hours), str(rate)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        raise SystemExit(f"the run failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--steps", type=int, default=4, help="shorter spans before the full one (halving)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up a span after this many seconds")
    ap.add_argument("--skip-full", action="store_true", help="run only the shorter spans")
    args = ap.parse_args()
    header("simulator: a day of traffic through email-primary-hang")
    spans = [args.hours / 2 ** k for k in range(args.steps, 0, -1)]
    if not args.skip_full:
        spans.append(args.hours)
    prev: dict[str, float] | None = None
    for h in spans:
        t0 = time.perf_counter()
        r = one(h, args.rate, args.timeout)
        if r is None:
            print(f"{h:8.3f} h: gave up after {time.perf_counter() - t0:.0f} s")
            break
        line = (f"{h:8.3f} h  {r['messages']:>9,d} msgs  {r['wall_s']:8.1f} s  "
                f"{r['messages'] / r['wall_s']:8.0f} msg/s  peak RSS {r['peak_rss_kib'] / 1024:8.1f} MiB")
        if prev is not None:
            grow = (r["peak_rss_kib"] - prev["peak_rss_kib"]) * 1024 / max(1, r["messages"] - prev["messages"])
            line += f"  +{grow:.0f} B/msg"
        print(line, flush=True)
        prev = r
    if prev is not None:
        day = 86_400 * args.rate
        print(f"extrapolated to {day:,.0f} messages: {prev['wall_s'] * day / prev['messages']:.0f} s "
              f"(target 120 s)")


if __name__ == "__main__":
    main()
