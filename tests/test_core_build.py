"""The compiled routing core (setup.py, mypyc) and its guard (daemon/core/__init__.py).

The install compiles engine, health and plan. These tests hold that (1) the installed core is
the compiled one, unless the install was told not to compile; (2) a compiled module never runs in
place of an edited source: a copy of the package with one edited source imports all three from
source, and says why; (3) ROUTINGD_PURE_PYTHON=1 forces the sources; (4) the compiled and the
pure-Python core give the same reports for every shipped drill, byte for byte (wall time aside).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from routingd.daemon.core import NATIVE_MODULES, core_build

ROOT = Path(__file__).resolve().parent.parent
NOT_COMPILED_ON_PURPOSE = os.environ.get("ROUTINGD_COMPILE", "1").strip().lower() in ("0", "no", "false", "off")

PROBE = """
import json, sys
from routingd.daemon.core import core_build
import routingd.daemon.core.engine as engine, routingd.daemon.core.health as health, routingd.daemon.core.plan as plan
print(json.dumps({"build": core_build(), "files": [m.__file__ for m in (engine, health, plan)],
                  "edited": getattr(engine, "EDITED_IN_TEST", False)}))
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
        r.pop("wall_s", None)
    out["reports"][name] = reps
print(json.dumps(out, sort_keys=True))
"""


def python(code: str, cwd: Path, pythonpath: Path | None = None, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "ROUTINGD_PURE_PYTHON"}
    if pythonpath is not None:
        e["PYTHONPATH"] = str(pythonpath)
    e.update(env)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def compiled() -> None:
    if NOT_COMPILED_ON_PURPOSE:
        pytest.skip("installed with ROUTINGD_COMPILE=0: nothing was compiled on purpose")
    assert core_build() == "compiled (mypyc)", \
        f"the install did not compile the core: {core_build()} (a C compiler and Python headers are needed)"


def test_the_installed_core_is_the_compiled_one(compiled: None) -> None:
    got = python(PROBE, cwd=Path("/"))
    assert got["build"] == "compiled (mypyc)"
    assert all(f.endswith(".so") for f in got["files"]), got["files"]


def copy_package(dst: Path) -> Path:
    """A copy of the installed tree (sources, extensions, build record) that the test may edit."""
    shutil.copytree(ROOT / "daemon", dst / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    for so in ROOT.glob("routingd_core__mypyc*"):
        shutil.copy2(so, dst / so.name)
    return dst


def test_a_copy_of_the_compiled_tree_runs_compiled(compiled: None, tmp_path: Path) -> None:
    tree = copy_package(tmp_path)
    got = python(PROBE, cwd=tmp_path, pythonpath=tree)
    assert got["build"] == "compiled (mypyc)"
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in got["files"]), got["files"]


@pytest.mark.parametrize("edited", NATIVE_MODULES)
def test_an_edited_source_is_never_shadowed_by_its_stale_extension(compiled: None, tmp_path: Path,
                                                                    edited: str) -> None:
    tree = copy_package(tmp_path)
    src = tree / "daemon" / "core" / f"{edited}.py"
    src.write_text(src.read_text() + "\nEDITED_IN_TEST = True\n")
    got = python(PROBE, cwd=tmp_path, pythonpath=tree)
    assert got["build"] == f"pure Python (daemon/core/{edited}.py changed since it was compiled (reinstall, e.g. `make venv`))"
    # all three come from source (a compiled engine must not meet a pure-Python plan), the copy's own
    assert got["files"] == [str(tree / "daemon" / "core" / f"{m}.py") for m in NATIVE_MODULES]
    assert got["edited"] is (edited == "engine")


def test_a_missing_build_record_means_source(compiled: None, tmp_path: Path) -> None:
    tree = copy_package(tmp_path)
    (tree / "daemon" / "core" / "_native_build.py").unlink()
    got = python(PROBE, cwd=tmp_path, pythonpath=tree)
    assert got["build"].startswith("pure Python (the compiled build is incomplete")
    assert all(f.endswith(".py") for f in got["files"])


def test_routingd_pure_python_forces_the_sources(compiled: None) -> None:
    got = python(PROBE, cwd=Path("/"), ROUTINGD_PURE_PYTHON="1")
    assert got["build"] == "pure Python (ROUTINGD_PURE_PYTHON is set)"
    assert all(f.endswith(".py") for f in got["files"])


def test_compiled_and_pure_python_give_the_same_reports_for_every_drill(compiled: None) -> None:
    fast = python(DRILLS, cwd=Path("/"))
    slow = python(DRILLS, cwd=Path("/"), ROUTINGD_PURE_PYTHON="1")
    assert fast["build"] == "compiled (mypyc)" and slow["build"].startswith("pure Python")
    assert len(fast["reports"]) >= 7
    for name in fast["reports"]:
        assert fast["reports"][name] == slow["reports"][name], name


def test_the_core_unit_and_property_tests_pass_on_the_pure_python_core_too(compiled: None) -> None:
    """The suite runs the compiled core; a checkout with an edited core source runs the sources.
    Both must pass the engine's own tests (the drills above compare whole reports)."""
    tests = [str(ROOT / "tests" / f) for f in ("test_engine.py", "test_engine_properties.py", "test_health.py",
                                               "test_plan.py")]
    probe = "from routingd.daemon.core import core_build; print(core_build())"
    env = {**os.environ, "ROUTINGD_PURE_PYTHON": "1"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=60).stdout.startswith("pure Python")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout
