"""`routingd simulate SCENARIO.toml... [--routing PATH]... [--json PATH] [--junit PATH] [--plot PATH] [--seed N]
[--check] [--format text|github]`

Also runnable as `python -m routingd.simulator.cli ...`. A SCENARIO that is not a file but names a shipped
drill (`email-primary-hang`) runs that drill. Exit status: 0 done (and every expectation met
with --check), 1 an expectation missed (--check), 2 invalid input (one line per problem).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
import sys
import time
from importlib import resources
import tomllib
from typing import Any, Callable, Collection, Sequence, TextIO

from ..daemon.annotations import FORMATS, render
from ..daemon.config_files import load_policy
from ..daemon.core.policy import Policy, PolicyError, Problem
from ..daemon.core.toml_lines import where
from ..daemon.secrets import read_secret

from .report import build_report, format_table
from .runner import RunResult, run
from .scenario import Scenario, load_scenario
from .setup import RunSetup, bind_scenario

EXIT_OK, EXIT_MISSED, EXIT_INVALID, EXIT_INTERNAL = 0, 1, 2, 3
PROGRESS_AFTER_S = 2.0


def shipped_drills() -> dict[str, str]:
    """Name -> path of the drills shipped in simulator/scenarios (routing*.toml are not drills)."""
    base = resources.files("routingd.simulator.scenarios")
    out: dict[str, str] = {}
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml") and not entry.name.startswith("routing"):
            out[entry.name[:-5]] = str(entry)
    return out


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO.toml",
                        help="scenario files, or names of shipped drills (see --list)")
    parser.add_argument("--routing", action="append", default=[], metavar="PATH",
                        help="routing file to run instead of the scenario's own; repeat to compare "
                             "several side by side on the same seeded traffic")
    parser.add_argument("--json", metavar="PATH", help='write {"runs": [report, ...]} to PATH ("-": stdout)')
    parser.add_argument("--junit", metavar="PATH",
                        help="write a JUnit XML report to PATH (a testsuite per run, a testcase per [expect])")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG timeline to PATH")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when an [expect] of a scenario is missed")
    parser.add_argument("--list", action="store_true", help="list the shipped drills and exit")
    parser.add_argument("--live", action="store_true",
                        help="also run the scenario against a real daemon and compare (docs/simulator.md)")
    parser.add_argument("--speed", type=float, default=None, metavar="N",
                        help="with --live: divide every duration of the scenario and its routing by N")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="github: errors and missed expectations as GitHub Actions annotations")


class _ProgressBar:
    """A one-line bar on stderr, only on a terminal and only once a run has taken > 2 s."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty()
        self.t0 = time.monotonic()
        self.drawn = False

    def __call__(self, fraction: float) -> None:
        if not self.enabled or time.monotonic() - self.t0 < PROGRESS_AFTER_S:
            return
        width = 30
        done = int(round(fraction * width))
        self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {fraction:4.0%}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _resolve_scenario_path(arg: str) -> str:
    """A file path as is; a bare name is a shipped drill's, else a ValueError saying so (a
    mistyped drill name is not a missing file)."""
    if os.path.exists(arg) or os.sep in arg or arg.endswith(".toml"):
        return arg
    drills = shipped_drills()
    if arg in drills:
        return drills[arg]
    close = difflib.get_close_matches(arg, drills, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"routingd simulate: unknown drill {arg!r}{hint} (see --list; a scenario file needs "
                     "its .toml or a path)")


def _unwritable(path: str) -> str | None:
    """Why an output file cannot be written (its directory is missing or not writable), checked
    before a run that may take minutes; None when it looks writable."""
    if path == "-":
        return None
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        return f"directory {d} does not exist"
    if os.path.isdir(path):
        return "is a directory"
    if not os.access(d, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


def prepare(scenario_args: Sequence[str], routing_args: Sequence[str],
            seed: int | None) -> tuple[list[RunSetup], list[str]]:
    """Load and check every scenario and routing file; return the runs or every error line."""
    errors: list[str] = []
    setups: list[RunSetup] = []
    policies: dict[str, Policy | None] = {}

    def policy(path: str) -> Policy | None:
        if path not in policies:
            try:
                policies[path] = load_policy(path, secrets=read_secret)
            except PolicyError as e:
                errors.extend(e.lines())
                policies[path] = None
        return policies[path]

    for arg in scenario_args:
        try:
            path = _resolve_scenario_path(arg)
        except ValueError as e:
            errors.append(str(e))
            continue
        try:
            sc: Scenario = load_scenario(path)
        except PolicyError as e:
            # Its references to the routing file, checked on what parses, are reported with the
            # parse errors: one round of fixes, not two.
            refs = _raw_references(e, routing_args, policy)
            errors.extend(PolicyError(e.path, e.problems + refs, e.text).lines() if refs else e.lines())
            continue
        if not routing_args and not os.path.exists(sc.routing_path):
            errors.append(f"{where(sc.path, sc.text, ('routing',))}: routing: routing file {sc.routing_path} not found "
                          f"(the path is relative to the scenario; give --routing PATH)")
            continue
        routing = list(routing_args) or [sc.routing_path]
        loaded = [(r, policy(r)) for r in routing]
        names: set[str] = set()
        for _, p in loaded:
            if p is not None:
                names.update(p.providers)
        for r, p in loaded:
            if p is None:
                continue
            elsewhere = names - set(p.providers) if len(loaded) > 1 else set()
            try:
                setups.append(bind_scenario(sc, p, r, seed, elsewhere))
            except PolicyError as e:
                errors.extend(f"{line} (with routing {r})" if len(loaded) > 1 else line for line in e.lines())
    return setups, list(dict.fromkeys(errors))


def _raw_references(err: PolicyError, routing_args: Sequence[str],
                    policy: Callable[[str], Policy | None]) -> list[Problem]:
    """The routes and providers an invalid scenario names that its routing file lacks, read from
    the raw TOML (the model did not validate); [] when the file is not TOML or its routing file
    does not load (its errors are reported on their own)."""
    if err.text is None:
        return []
    try:
        raw = tomllib.loads(err.text)
    except tomllib.TOMLDecodeError:
        return []
    rel = raw.get("routing", "routing.toml")
    paths = list(routing_args) or ([os.path.join(os.path.dirname(os.path.abspath(err.path)), rel)]
                                   if isinstance(rel, str) else [])
    pols = [pol for pol in (policy(r) for r in paths if os.path.exists(r)) if pol is not None]
    if len(pols) != 1:          # with several routing files a name may be another one's: bind_scenario says
        return []
    pol = pols[0]
    seen = {p.loc for p in err.problems}
    out: list[Problem] = []

    def check(loc: tuple[str | int, ...], name: Any, known: Collection[str], kind: str) -> None:
        if isinstance(name, str) and name not in known and not any(loc[:len(s)] == s for s in seen):
            out.append(Problem(loc, f"unknown {kind} {name!r} in {pol.path}; {kind}s: "
                                    f"{', '.join(sorted(known)) or 'none'}"))

    traffic = raw.get("traffic")
    if isinstance(traffic, dict):
        check(("traffic", "route"), traffic.get("route"), pol.routes, "route")
        if isinstance(traffic.get("routes"), dict):
            for r in traffic["routes"]:
                check(("traffic", "routes", r), r, pol.routes, "route")
    if isinstance(raw.get("providers"), dict):
        for name in raw["providers"]:
            check(("providers", name), name, pol.providers, "provider")
    if isinstance(raw.get("outages"), list):
        for i, o in enumerate(raw["outages"]):
            if isinstance(o, dict):
                check(("outages", i, "provider"), o.get("provider"), pol.providers, "provider")
    return out


def run_all(setups: Sequence[RunSetup], stderr: TextIO | None = None, *, trace: bool = False) -> list[RunResult]:
    """Run each setup; trace=True keeps every message and attempt (what --plot draws)."""
    out: list[RunResult] = []
    for s in setups:
        bar = _ProgressBar(stderr, f"{s.scenario.name} ({os.path.basename(s.routing_path)})") \
            if stderr is not None else None
        try:
            out.append(run(s, bar, trace=trace))
        finally:
            if bar is not None:
                bar.close()
    return out


def simulate_command(args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    try:
        if args.list:
            for name, path in shipped_drills().items():
                try:
                    desc = load_scenario(path).model.description
                except PolicyError:
                    desc = "(invalid)"
                stdout.write(f"{name:28s} {desc}\n")
            return EXIT_OK
        if not args.scenarios:
            stderr.write("routingd simulate: give at least one SCENARIO.toml (or --list the shipped drills)\n")
            return EXIT_INVALID
        if args.plot and importlib.util.find_spec("matplotlib") is None:   # before a run it would waste
            stderr.write("routingd simulate: --plot needs matplotlib, which is not installed: "
                         "pip install 'routingd[plot]'\n")
            return EXIT_INVALID
        for flag, out, what in (("--json", args.json, "JSON report"), ("--junit", args.junit, "JUnit report"),
                                ("--plot", args.plot, "plot")):
            why = _unwritable(out) if out else None
            if why is not None:
                stderr.write(f"{out}: cannot write the {what} ({flag}): {why}\n")
                return EXIT_INVALID
        if args.speed is not None and not args.live:
            # it scales the live comparison only: a plain run at speed 1 would look like an answer
            stderr.write("routingd simulate: --speed goes with --live (a simulated run needs no speed-up)\n")
            return EXIT_INVALID
        if args.live:
            from .live_compare import cli_live
            return cli_live(args, prepare, stdout, stderr)
        setups, errors = prepare(args.scenarios, args.routing, args.seed)
        if errors:
            for line in errors:
                stderr.write(render(line, args.format, title="routingd simulate") + "\n")
            return EXIT_INVALID
        results = run_all(setups, stderr, trace=bool(args.plot))
        reports = [build_report(r) for r in results]
        table = format_table(reports)
        if args.json == "-":
            stderr.write(table)
        else:
            stdout.write(table)
        if args.json:
            doc = json.dumps({"runs": reports}, indent=2) + "\n"
            if args.json == "-":
                stdout.write(doc)
            else:
                try:
                    with open(args.json, "w") as f:
                        f.write(doc)
                except OSError as e:
                    stderr.write(f"{args.json}: cannot write the JSON report: {e.strerror or e}\n")
                    return EXIT_INVALID
        if args.junit:
            from .junit import junit_xml
            try:
                with open(args.junit, "wb") as fb:
                    fb.write(junit_xml(reports, {s.scenario.path: s.scenario.text for s in setups}, args.plot))
            except OSError as e:
                stderr.write(f"{args.junit}: cannot write the JUnit report: {e.strerror or e}\n")
                return EXIT_INVALID
        if args.plot:
            from .plot import write_plot
            try:
                write_plot(results, args.plot)
            except OSError as e:
                stderr.write(f"{args.plot}: cannot write the plot: {e.strerror or e}\n")
                return EXIT_INVALID
        if args.check:
            missed = _missed(reports, {s.scenario.path: s.scenario.text for s in setups})
            for line in missed:
                stderr.write(render(line, args.format, title="routingd simulate --check") + "\n")
            if missed:
                return EXIT_MISSED
        return EXIT_OK
    except KeyboardInterrupt:
        stderr.write("\nroutingd simulate: interrupted\n")
        return 130
    except Exception as e:  # never a traceback to a CLI user
        stderr.write(f"routingd simulate: internal error: {type(e).__name__}: {e}\n")
        return EXIT_INTERNAL


def _missed(reports: Sequence[dict[str, Any]], texts: dict[str, str | None]) -> list[str]:
    out = []
    for rep in reports:
        for e in rep["expect"]:
            if not e["ok"]:
                file = where(rep["scenario_file"], texts.get(rep["scenario_file"]), ("expect", e["name"]))
                out.append(f"{file}: expect.{e['name']}: missed with {rep['routing']}: "
                           f"actual {e['actual']}, target {e['target']}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routingd simulate",
                                     description="Replay provider outages against a routing file.")
    add_simulate_arguments(parser)
    return simulate_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
