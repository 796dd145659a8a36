"""The compiled routing core (setup.py, mypyc) and its guard (daemon/core/__init__.py).

The install compiles the modules of COMPILED (commands, engine, health, plan, tree). These tests hold that (1) the installed core is
the compiled one, unless the install was told not to compile; (2) a compiled module never runs in
place of an edited source: importing a copy of the package with one edited source fails, naming
the file and the fix; (3) the compiled and the pure-Python core (a copy of the sources without
the extensions) give the same reports for every shipped drill, byte for byte (wall time aside),
and pass the engine's own tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from routingd.daemon.core import COMPILED, core_build

ROOT = Path(__file__).resolve().parent.parent
NOT_COMPILED_ON_PURPOSE = os.environ.get("ROUTINGD_COMPILE", "1").strip().lower() in ("0", "no", "false", "off")

PROBE = """
import importlib, json
from routingd.daemon.core import COMPILED, core_build
mods = [importlib.import_module(f"routingd.daemon.core.{m}") for m in COMPILED]
print(json.dumps({"build": core_build(), "files": [m.__file__ for m in mods]}))
"""

DRILLS = """
import json
from routingd.simulator.cli import prepare, shipped_drills
from routingd.simulator.report import build_report
from routingd.simulator.runner import run
from routingd.daemon.core import core_build
out = {"build": core_build(), "reports": {}}
for name, path in sorted(shipped_drills().items()):
    setups, errors = prepare([path], [], None)
    assert not errors, errors
    reps = [build_report(run(s)) for s in setups]
    for r in reps:
        for where in ("wall_s", "routing", "scenario_file"):     # the copy's paths differ
            r.pop(where, None)
    out["reports"][name] = reps
print(json.dumps(out, sort_keys=True))
"""


def python(code: str, pythonpath: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    p = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True,
                       timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def copy_package(dst: Path, compiled: bool) -> Path:
    """The installed layout (routingd/daemon, routingd/simulator) copied from this checkout, with
    or without the compiled extensions; on PYTHONPATH it is found before the editable install."""
    ignore = shutil.ignore_patterns("__pycache__", *(() if compiled else ("*.so",)))
    for folder in ("daemon", "simulator"):
        shutil.copytree(ROOT / folder, dst / "routingd" / folder, ignore=ignore)
    shutil.copy2(ROOT / "routing.toml", dst / "routingd")      # the shipped drills' ../../routing.toml
    return dst


@pytest.fixture(scope="module")
def compiled() -> None:
    if NOT_COMPILED_ON_PURPOSE:
        pytest.skip("installed with ROUTINGD_COMPILE=0: nothing was compiled on purpose")
    assert core_build() == "compiled (mypyc)", \
        f"the install did not compile the core: {core_build()} (a C compiler and Python headers are needed)"


def test_the_installed_core_is_the_compiled_one(compiled: None) -> None:
    got = json.loads(python(PROBE).stdout)
    assert got["build"] == "compiled (mypyc)"
    assert all(f.endswith(".so") for f in got["files"]), got["files"]


def test_a_copy_of_the_compiled_tree_runs_compiled(compiled: None, tmp_path: Path) -> None:
    tree = copy_package(tmp_path, compiled=True)
    got = json.loads(python(PROBE, pythonpath=tree).stdout)
    assert got["build"] == "compiled (mypyc)"
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in got["files"]), got["files"]


@pytest.mark.parametrize("edited", COMPILED)
def test_an_edited_source_never_runs_as_its_stale_extension(compiled: None, tmp_path: Path, edited: str) -> None:
    tree = copy_package(tmp_path, compiled=True)
    src = tree / "routingd" / "daemon" / "core" / f"{edited}.py"
    src.write_text(src.read_text() + "\nEDITED_IN_TEST = True\n")
    p = python(PROBE, pythonpath=tree, ok=False)
    assert p.returncode != 0 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("routingd.daemon.core.StaleCompiledCore: ") and str(src) in last, p.stderr
    assert "changed since it was compiled: rebuild the core with `make venv`" in last


def test_a_copy_without_the_extensions_runs_the_sources(tmp_path: Path) -> None:
    tree = copy_package(tmp_path, compiled=False)
    got = json.loads(python(PROBE, pythonpath=tree).stdout)
    assert got["build"] == "pure Python"
    assert got["files"] == [str(tree / "routingd" / "daemon" / "core" / f"{m}.py") for m in COMPILED]


def test_compiled_and_pure_python_give_the_same_reports_for_every_drill(compiled: None, tmp_path: Path) -> None:
    fast = json.loads(python(DRILLS).stdout)
    slow = json.loads(python(DRILLS, pythonpath=copy_package(tmp_path, compiled=False)).stdout)
    assert fast["build"] == "compiled (mypyc)" and slow["build"] == "pure Python"
    assert len(fast["reports"]) >= 7
    for name in fast["reports"]:
        assert fast["reports"][name] == slow["reports"][name], name


# bounded, but longer than the suite's 120 s: the core's unit and property tests rerun in a subprocess on the interpreted core: minutes of CPU on a busy machine (make test-busy)
@pytest.mark.timeout(600)
def test_the_core_unit_and_property_tests_pass_on_the_pure_python_core_too(compiled: None, tmp_path: Path) -> None:
    """The suite runs the compiled core; an install with ROUTINGD_COMPILE=0 runs the sources.
    Both must pass the engine's own tests (the drills above compare whole reports)."""
    tree = copy_package(tmp_path, compiled=False)
    tests = [str(ROOT / "tests" / f) for f in ("test_engine.py", "test_engine_properties.py", "test_health.py",
                                               "test_plan.py")]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    probe = "from routingd.daemon.core import core_build; print(core_build())"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "pure Python"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout
