"""`routingd simulate SCENARIO --live`: the comparison of the simulated and the live report, and
the command that makes both (docs/simulator.md "Simulated vs live"; simulator/live.py runs the
daemon side).

Each figure side by side with its difference; `--check` fails on a ratio more than 5% apart, or
a time more than max(5%, 50 ms) apart ("never" agrees only with "never").
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from typing import Any, Callable, TextIO

from ..daemon.core.policy import Policy, PolicyError

from .live import LiveError, LiveRoutingHook, calibrate, prepare_live, run_live
from .report import build_report
from .runner import run
from .scenario import Scenario
from .setup import RunSetup

RATIO_TOLERANCE = 0.05          # delivered, expired, failovers per message: absolute difference
TIME_TOLERANCE = 0.05           # time percentiles, route-around: relative difference ...
TIME_FLOOR_S = 0.050            # ... or this many seconds, whichever is larger


# ------------------------------------------------------------------------------ the comparison


def _figures(rep: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(name, kind, value) of each compared figure; kind "ratio" or "time"."""
    n = rep["messages"] or 1
    ttd = rep["time_to_deliver_s"]
    out: list[tuple[str, str, float | None]] = [
        ("delivered ratio", "ratio", rep["delivered_ratio"]),
        ("expired ratio", "ratio", rep["expired"] / n),
        ("provider failovers per message", "ratio", rep["failovers"]["provider"] / n),
        ("channel failovers per message", "ratio", rep["failovers"]["channel"] / n),
        ("time to deliver p50", "time", ttd["p50"]),
        ("time to deliver p95", "time", ttd["p95"]),
        ("time to deliver p99", "time", ttd["p99"]),
    ]
    for o in rep["outages"]:
        out.append((f"route-around {o['provider']} {o['kind']} @{o['start_s']:g}s", "time", o["time_to_route_around_s"]))
    return out


def compare(sim: dict[str, Any], live: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per compared figure: sim, live, difference, tolerance, ok."""
    rows = []
    for (name, kind, a), (_, _, b) in zip(_figures(sim), _figures(live)):
        if a is None or b is None:
            diff = None
            ok = a is None and b is None          # "never" on both sides agrees
            tol = None
        else:
            diff = b - a
            tol = RATIO_TOLERANCE if kind == "ratio" else max(TIME_TOLERANCE * max(abs(a), abs(b)), TIME_FLOOR_S)
            ok = abs(diff) <= tol + 1e-9
        rows.append({"name": name, "kind": kind, "sim": a, "live": b, "diff": diff, "tolerance": tol, "ok": ok})
    return rows


def _fmt(kind: str, v: float | None) -> str:
    if v is None:
        return "never" if kind == "time" else "-"
    return f"{v * 1000:.1f}ms" if kind == "time" else f"{v:.4f}"


def format_comparison(sim: dict[str, Any], live: dict[str, Any], rows: list[dict[str, Any]], speed: float) -> str:
    title = (f"scenario {sim['scenario']} at speed {speed:g}: {sim['messages']} messages simulated, "
             f"{live['messages']} live (times in the sped-up run's seconds; x{speed:g} for the scenario's)")
    head = ("figure", "simulated", "live", "difference", "tolerance", "")
    table = [head] + [(r["name"], _fmt(r["kind"], r["sim"]), _fmt(r["kind"], r["live"]),
                       "-" if r["diff"] is None else (f"{r['diff'] * 1000:+.1f}ms" if r["kind"] == "time"
                                                      else f"{r['diff']:+.4f}"),
                       "-" if r["tolerance"] is None else _fmt(r["kind"], r["tolerance"]),
                       "ok" if r["ok"] else "DIFFERS") for r in rows]
    extra = [("violations", str(sim["violations"]), str(live["violations"]), "", "", ""),
             ("wall time", f"{sim['wall_s']:.2f}s", f"{live['wall_s']:.2f}s", "", "", "")]
    table += extra
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    lines = [title]
    for k, r in enumerate(table):
        lines.append("  ".join(r[0].ljust(widths[0]) if c == 0 else r[c].rjust(widths[c])
                               for c in range(len(head))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    verdict = "agree" if all(r["ok"] for r in rows) else "DIFFER"
    lines.append(f"simulated vs live: {verdict}")
    return "\n".join(lines) + "\n"


def live_command(scenario: Scenario, policy: Policy, speed: float, seed: int | None, check: bool,
                 stdout: TextIO, stderr: TextIO, json_path: str | None = None,
                 live_hook: LiveRoutingHook | None = None) -> int:
    """The whole `--live` invocation for one scenario; returns the exit status (0, 1 with
    --check when the runs differ, 2 invalid input)."""
    workdir = tempfile.mkdtemp(prefix="routingd-sim-")
    try:
        try:
            prep = prepare_live(scenario, policy, workdir, speed, seed)
        except PolicyError as e:
            for line in e.lines():
                stderr.write(line + "\n")
            return 2
        sim_model = prep.setup.scenario.model.simulation
        try:
            if "commit_delay" in sim_model.model_fields_set:      # the scenario's own: no calibration
                commit, measured = sim_model.commit_delay, 0
            else:
                commit, measured = calibrate(float(prep.setup.scenario.model.traffic.rate))
            sim = build_report(run(prep.setup, commit_delay=commit))
            live = build_report(run_live(prep, stderr, live_hook))
        except LiveError as e:
            stderr.write(f"routingd simulate --live: {e}\n")
            return 3
        rows = compare(sim, live)
        commit_doc = {"median_ms": commit.median, "p99_ms": commit.p99, "measured_attempts": measured}
        stdout.write(format_comparison(sim, live, rows, speed))
        stdout.write(f"commit delay before each call (simulated): median {commit.median}ms, p99 {commit.p99}ms"
                     + (f", measured on {measured} attempts\n" if measured else ", the scenario's\n"))
        if json_path:
            doc = json.dumps({"runs": [sim, live], "comparison": rows, "speed": speed,
                              "commit_delay": commit_doc}, indent=2) + "\n"
            if json_path == "-":
                stdout.write(doc)
            else:
                with open(json_path, "w") as f:
                    f.write(doc)
        if check:
            missed = [r for r in rows if not r["ok"]]
            for r in missed:
                stderr.write(f"{scenario.path}: live.{r['name']}: simulated {_fmt(r['kind'], r['sim'])}, "
                             f"live {_fmt(r['kind'], r['live'])}: more than {_fmt(r['kind'], r['tolerance'])} apart\n")
            if missed:
                return 1
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def cli_live(args: Any, prepare: Callable[..., tuple[list[RunSetup], list[str]]], stdout: TextIO, stderr: TextIO) -> int:
    """`routingd simulate --live`: each scenario (against its routing file) simulated and live."""
    bad = [f"routingd simulate: --live does not go with {opt}" for opt, on in
           # each an output --live does not write: refused, never accepted and left unwritten
           (("--plot", args.plot), ("--junit", args.junit), ("--format github", args.format == "github"),
            ("several --routing files", len(args.routing) > 1)) if on]
    speed = 1.0 if args.speed is None else args.speed
    if not speed > 0:
        bad.append(f"routingd simulate: --speed must be greater than 0, got {speed:g}")
    elif math.isinf(speed):
        bad.append("routingd simulate: --speed must be a finite number, got inf")
    if bad:
        for line in bad:
            stderr.write(line + "\n")
        return 2
    setups, errors = prepare(args.scenarios, args.routing, args.seed)
    if errors:
        for line in errors:
            stderr.write(line + "\n")
        return 2
    worst = 0
    for s in setups:
        code = live_command(s.scenario, s.policy, speed, args.seed, args.check, stdout, stderr, args.json)
        worst = max(worst, code)
    return worst
