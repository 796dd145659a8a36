"""Simulator: simulated messages per wall-second vs a bare SimPy loop, and every drill's wall time.

Subject: routingd.simulator.runner.run() on benchmarks/scenarios/throughput.toml (one healthy provider,
log-normal latency, Poisson arrivals at --rate for --sim-seconds), the full driver: engine,
health tracker, metrics, the deadline-hierarchy checker.
Baseline: a bare SimPy loop with the same seeded Poisson arrival process and one timed attempt
per message, written the SimPy way: one process per message yielding one timeout (the same
log-normal latency draw) and recording its time to deliver. Also shown, without a target: an
even leaner loop (a bare timeout + callback per message, the trick the runner itself uses).
Each side runs --repeat times alternately; the fastest run of each counts (the least disturbed
by other load on the machine). Target: subject >= 0.33 x the baseline's messages per wall-second.
Then every shipped drill (simulator/scenarios) runs once as `routingd simulate` would, with its
wall time and whether its [expect] held.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import simpy

from common import BENCH, BenchResult, header

from routingd.daemon.core import core_build
from routingd.daemon.core.behaviour import LatencyDist, sample_latency_s
from routingd.daemon.config_files import load_policy
from routingd.simulator.runner import run as sim_run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import RunSetup, bind_scenario

TARGET = 0.33
DEFAULT_RATE = 200.0
DEFAULT_SIM_S = 300.0
SCENARIO = BENCH / "scenarios" / "throughput.toml"


def make_setup(_workdir: Path | None, rate: float, sim_s: float) -> RunSetup:
    """The throughput scenario bound to its routing file, with rate and duration overridden."""
    sc = load_scenario(str(SCENARIO))
    model = sc.model.model_copy(update={"duration": int(sim_s * 1000),
                                        "traffic": sc.model.traffic.model_copy(update={"rate": rate})})
    sc = type(sc)(model, sc.path, sc.name, sc.routing_path, sc.provider_overrides)
    return bind_scenario(sc, load_policy(sc.routing_path))


def bare_simpy(rate: float, sim_s: float, seed: int, latency: LatencyDist,
               style: str = "process") -> tuple[int, float]:
    """A baseline loop: Poisson arrivals, one timed attempt each; (messages, wall seconds).

    style "process": SimPy's idiom, one process per message that yields one timeout (the
    attempt) and records its time to deliver. style "callback": the leanest form, a bare timeout
    with a callback per message (the trick simulator/runner.py uses for its attempts).
    """
    wall0 = time.perf_counter()
    env = simpy.Environment()
    traffic = random.Random(f"{seed}:traffic")
    prov = random.Random(f"{seed}:ses")
    ttd: list[float] = []

    def message() -> Any:
        t0 = env.now
        yield env.timeout(sample_latency_s(latency, prov))
        ttd.append(env.now - t0)

    def arrivals() -> Any:
        while True:
            gap = traffic.expovariate(rate)
            if env.now + gap >= sim_s:
                return
            yield env.timeout(gap)
            if style == "process":
                env.process(message())
            else:
                t0 = env.now
                env.timeout(sample_latency_s(latency, prov)).callbacks.append(  # type: ignore[union-attr]
                    lambda _e, t0=t0: ttd.append(env.now - t0))

    env.process(arrivals())
    env.run()
    return len(ttd), time.perf_counter() - wall0


def run(rate: float = DEFAULT_RATE, sim_s: float = DEFAULT_SIM_S, repeat: int = 2, drills: bool = True) -> BenchResult:
    header(f"simulator: {rate:g} msg/s for {sim_s:g} simulated s, best of {repeat}; core {core_build()}")
    res = BenchResult("simulator")
    t_start = time.monotonic()
    setup = make_setup(None, rate, sim_s)
    latency = setup.specs["ses"].latency
    sub_best: tuple[float, int] | None = None
    base_best: tuple[float, int] | None = None
    lean_best: tuple[float, int] | None = None
    violations = 0
    for _ in range(max(1, repeat)):
        n_b, wall_b = bare_simpy(rate, sim_s, setup.seed, latency, "process")
        if base_best is None or wall_b < base_best[0]:
            base_best = (wall_b, n_b)
        n_l, wall_l = bare_simpy(rate, sim_s, setup.seed, latency, "callback")
        if lean_best is None or wall_l < lean_best[0]:
            lean_best = (wall_l, n_l)
        r = sim_run(setup)
        violations = r.checker.total
        n_s = r.metrics.messages
        if sub_best is None or r.wall_s < sub_best[0]:
            sub_best = (r.wall_s, n_s)
    assert sub_best is not None and base_best is not None and lean_best is not None
    sub_rate = sub_best[1] / sub_best[0]
    base_rate = base_best[1] / base_best[0]
    lean_rate = lean_best[1] / lean_best[0]
    res.say(f"baseline bare SimPy loop (process per message): {base_rate:9.0f} msg/wall-s "
            f"({base_best[1]} messages in {base_best[0]:.2f}s)")
    res.say(f"leaner loop (timeout + callback per message):   {lean_rate:9.0f} msg/wall-s "
            f"({lean_best[1]} messages in {lean_best[0]:.2f}s)")
    res.say(f"routingd simulator:                             {sub_rate:9.0f} msg/wall-s "
            f"({sub_best[1]} messages in {sub_best[0]:.2f}s, violations {violations})")
    r_ = sub_rate / base_rate if base_rate else None
    r_lean = sub_rate / lean_rate if lean_rate else None
    res.figures.update({"rate": rate, "sim_s": sim_s, "messages": sub_best[1],
                        "baseline_msg_per_wall_s": round(base_rate), "lean_msg_per_wall_s": round(lean_rate),
                        "simulator_msg_per_wall_s": round(sub_rate), "ratio": r_, "ratio_lean": r_lean,
                        "core": core_build()})
    res.check("simulator / bare SimPy loop", r_, TARGET)
    res.check("simulator / leaner callback loop", r_lean, None)
    if drills:
        res.figures["drills"] = run_drills(res)
    res.wall_s = time.monotonic() - t_start
    return res


def run_drills(res: BenchResult) -> list[dict[str, Any]]:
    from routingd.simulator.cli import prepare, shipped_drills
    from routingd.simulator.report import build_report

    out = []
    res.say("shipped drills (routingd simulate NAME):")
    res.say(f"  {'drill':28s} {'messages':>8s} {'wall':>7s} {'msg/wall-s':>10s}  expect")
    for name, path in shipped_drills().items():
        setups, errors = prepare([path], [], None)
        if errors:
            res.say(f"  {name:28s} invalid: {errors[0]}")
            out.append({"drill": name, "error": errors[0]})
            continue
        for s in setups:
            t0 = time.perf_counter()
            rep = build_report(sim_run(s))
            wall = time.perf_counter() - t0
            res.say(f"  {name:28s} {rep['messages']:8d} {wall:6.2f}s {rep['messages'] / wall:10.0f}  "
                    f"{'ok' if rep['ok'] else 'MISSED'}")
            out.append({"drill": name, "messages": rep["messages"], "wall_s": round(wall, 3), "expect_ok": rep["ok"]})
    total = sum(d.get("wall_s", 0.0) for d in out)
    res.say(f"  {'all drills':28s} {'':8s} {total:6.2f}s")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="arrivals per second (default 200)")
    p.add_argument("--sim-seconds", type=float, default=DEFAULT_SIM_S, help="simulated seconds (default 300)")
    p.add_argument("--repeat", type=int, default=2, help="runs per side; the fastest counts (default 2)")
    p.add_argument("--no-drills", action="store_true", help="skip the shipped drills' wall times")
    a = p.parse_args()
    return 0 if run(a.rate, a.sim_seconds, a.repeat, not a.no_drills).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
