"""The simulator's compiled driver (setup.py compiles its per-message modules with mypyc, like
the core) and what its speed rests on (docs/performance.md "Simulator: a day of traffic").

(1) The install compiles routingd.simulator.COMPILED, unless it was told not to; (2) a compiled
simulator module never runs in place of its edited source (the core's guard, check_compiled);
(3) the driver's `Due` events go through SimPy's public Environment.schedule exactly as its
own Timeouts do: the same times, the same order, each handler called once with its event;
(4) the driver's compiled draws are random.Random's, draw for draw: its normal draw is
gauss(0, 1) (the commit delays), its exponential one expovariate(rate) (the arrivals at one
rate), so every report is what Random's own methods give. That the compiled and the pure-Python
simulator give the same reports for every shipped drill is tests/test_core_build.py's (its
pure copy leaves out every extension, the simulator's too).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import simpy
from simpy.core import NORMAL
from test_core_build import NOT_COMPILED_ON_PURPOSE, copy_package

from routingd.simulator import COMPILED, simulator_build
from routingd.simulator.draws import Exponential, Gauss
from routingd.simulator.happenings import Due

PROBE = """
import importlib, json
from routingd.simulator import COMPILED, simulator_build
mods = [importlib.import_module(f"routingd.simulator.{m}") for m in COMPILED]
print(json.dumps({"build": simulator_build(), "files": [m.__file__ for m in mods]}))
"""


def python(code: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)}, check=False)


@pytest.fixture(scope="module")
def compiled() -> None:
    if NOT_COMPILED_ON_PURPOSE:
        pytest.skip("installed with ROUTINGD_COMPILE=0: nothing was compiled on purpose")
    assert simulator_build() == "compiled (mypyc)", \
        f"the install did not compile the simulator: {simulator_build()} (a C compiler and Python headers are needed)"


def test_the_installed_simulator_is_the_compiled_one(compiled: None, tmp_path: Path) -> None:
    tree = copy_package(tmp_path, compiled=True)
    p = python(PROBE, tree)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["build"] == "compiled (mypyc)"
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in got["files"]), got["files"]


@pytest.mark.parametrize("edited", ["runner", "metrics"])
def test_an_edited_simulator_source_never_runs_as_its_stale_extension(compiled: None, tmp_path: Path,
                                                                      edited: str) -> None:
    assert edited in COMPILED
    tree = copy_package(tmp_path, compiled=True)
    src = tree / "routingd" / "simulator" / f"{edited}.py"
    src.write_text(src.read_text() + "\nEDITED_IN_TEST = True\n")
    p = python(PROBE, tree)
    assert p.returncode != 0 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("routingd.daemon.core.StaleCompiledCore: ") and str(src) in last, p.stderr
    assert "changed since it was compiled: rebuild the core with `make venv`" in last


def test_a_copy_without_the_extensions_runs_the_simulator_sources(tmp_path: Path) -> None:
    tree = copy_package(tmp_path, compiled=False)
    p = python(PROBE, tree)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["build"] == "pure Python"
    assert got["files"] == [str(tree / "routingd" / "simulator" / f"{m}.py") for m in COMPILED]


def test_due_events_keep_simpys_times_and_order() -> None:
    """A Due scheduled with Environment.schedule(due, NORMAL, delay) and a Timeout(delay) go in
    SimPy's one queue alike: handled at the same times, ties in the order they were scheduled,
    each handler called once with its event, whose callbacks SimPy then sets to None."""
    rng = random.Random(7)
    delays = [rng.choice((0.0, 0.5, 1.0, rng.random())) for _ in range(400)]

    def order(use_due: bool) -> list[tuple[float, int]]:
        env = simpy.Environment()
        seen: list[tuple[float, int]] = []
        handled: list[Any] = []

        def handler(k: int) -> Any:
            def handle(ev: Any) -> None:
                seen.append((env.now, k))
                handled.append(ev)
            return handle

        for k, d in enumerate(delays):
            if use_due and k % 2 == 0:      # mixed with plain Timeouts, as a run never is: same queue
                due = Due((handler(k),), None)
                due.at = env.now + d
                env.schedule(due, NORMAL, d)  # type: ignore[arg-type]
            else:
                env.timeout(d).callbacks.append(handler(k))  # type: ignore[union-attr]
        env.run()
        assert len(handled) == len(delays)
        for ev in handled:
            assert ev.callbacks is None
            if isinstance(ev, Due):
                assert ev.at == seen[handled.index(ev)][0]
        return seen

    assert order(use_due=True) == order(use_due=False)


def test_the_compiled_normal_draw_is_random_gauss_draw_for_draw() -> None:
    for seed in ("1:store", "42:store", 3):
        mine, theirs = Gauss(random.Random(seed)), random.Random(seed)
        assert [mine.draw() for _ in range(5001)] == [theirs.gauss(0.0, 1.0) for _ in range(5001)]


def test_the_compiled_exponential_draw_is_random_expovariate_draw_for_draw() -> None:
    for seed, rate in (("1:traffic", 100.0), ("42:traffic", 0.5), (3, 20.0)):
        mine, theirs = Exponential(random.Random(seed), rate), random.Random(seed)
        assert [mine.draw() for _ in range(5000)] == [theirs.expovariate(rate) for _ in range(5000)]
