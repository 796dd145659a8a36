"""Instructions per simulated message, counted by valgrind's callgrind: a figure the machine's load
does not move (wall-clock ratios on this shared machine move by +-0.01-0.03 from run to run).

    .venv/bin/python benchmarks/count_instructions.py            # all four subjects (~3 min)
    .venv/bin/python benchmarks/count_instructions.py engine      # one of them

Subjects, each on benchmarks/scenarios/throughput.toml (one healthy provider, 200 msg/s):
    simulator        routingd.simulator.runner.run(), the whole simulator (engine, checker, metrics, SimPy)
    baseline         bench_simulator.bare_simpy(), the bare SimPy loop the simulator is judged by
    engine           the engine alone: Delivery(...).start() + one 200 outcome per message
    engine-noevents  the same, with Delivery(events=frozenset()): the engine builds no events
Each subject runs twice under callgrind, small and large; instructions per message =
(large - small) / (messages large - messages small), so start-up and imports cancel out.
Needs valgrind (Debian: apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBJECTS = ("simulator", "baseline", "engine", "engine-noevents")
SMALL, LARGE = 1.0, 20.0            # simulated seconds (simulator, baseline)
SMALL_N, LARGE_N = 100, 4100        # messages (engine)


def _one(subject: str, size: float) -> int:
    """Run `subject` once in this process; return how many messages it handled."""
    sys.path.insert(0, str(HERE))
    from bench_simulator import bare_simpy, make_setup

    setup = make_setup(None, 200.0, size)
    if subject == "simulator":
        from routingd.simulator.runner import run
        return run(setup).metrics.messages
    if subject == "baseline":
        n, _ = bare_simpy(200.0, size, setup.seed, setup.specs["ses"].latency, "process")
        return n
    from routingd.daemon.core.engine import Delivery, Outcome, StartAttempt
    from routingd.daemon.core.health import HealthTracker
    plan = setup.plans["default"]
    health, rng, ok, to = HealthTracker(), random.Random(1), Outcome(status=200), {"email": "sim-email"}
    events = frozenset() if subject == "engine-noevents" else None
    n = int(size)
    for i in range(n):
        d = Delivery(f"m{i}", plan, to, 1.0, rng, health, events=events)
        attempt = next(c for c in d.start(1.0) if type(c) is StartAttempt)
        d.on_outcome(attempt.attempt_id, ok, 1.05)
    return n


def _counted(subject: str, size: float) -> tuple[int, int]:
    """(messages, instructions) of one run under callgrind."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", subject, str(size)],
        capture_output=True, text=True, timeout=900, check=True)
    msgs = re.search(r"^messages (\d+)$", out.stdout, re.M)
    instr = re.search(r"Collected : (\d+)", out.stderr)
    if msgs is None or instr is None:
        raise SystemExit(f"count_instructions: could not read the run of {subject}:\n{out.stdout}\n{out.stderr}")
    return int(msgs.group(1)), int(instr.group(1))


def per_message(subject: str) -> float:
    small, large = (SMALL_N, LARGE_N) if subject.startswith("engine") else (SMALL, LARGE)
    n1, c1 = _counted(subject, small)
    n2, c2 = _counted(subject, large)
    return (c2 - c1) / (n2 - n1)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(f"messages {_one(sys.argv[2], float(sys.argv[3]))}")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("subjects", nargs="*", metavar="SUBJECT", help=f"any of {', '.join(SUBJECTS)} (default: all)")
    a = p.parse_args()
    unknown = [s for s in a.subjects if s not in SUBJECTS]
    if unknown:
        p.error(f"unknown subject {unknown[0]!r}; choose from {', '.join(SUBJECTS)}")
    if shutil.which("valgrind") is None:
        print("count_instructions: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    got: dict[str, float] = {}
    for subject in a.subjects or SUBJECTS:
        print(f"counting {subject} ...", file=sys.stderr, flush=True)
        got[subject] = per_message(subject)
        print(f"  {subject:16s} {got[subject] / 1000:8.1f}k instructions per message")
    if "simulator" in got and "baseline" in got:
        print(f"  baseline / simulator = {got['baseline'] / got['simulator']:.3f} (in instructions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
