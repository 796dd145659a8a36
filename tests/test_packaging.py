"""What the distribution installs: only `routingd` import names, so it lives beside python-daemon.

routingd once installed top-level `daemon` and `simulator` packages, and `pip install routingd`
beside python-daemon (Airflow's dependency, among others) overwrote python-daemon's
daemon/__init__.py. Here a wheel is built from a copy of the sources and (1) its top-level names
are only `routingd`; (2) installed into a throwaway venv beside python-daemon (from the package
index), both work, and uninstalling routingd leaves python-daemon whole. The pure-Python wheel
(ROUTINGD_COMPILE=0) runs in `make test`; the compiled one takes minutes to build (make soak).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(dst: Path, compiled: bool) -> Path:
    """A wheel built with pip from a copy of the repository's sources (no extension of this
    checkout, no build/ left in it)."""
    src = dst / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    for folder in ("daemon", "simulator"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    env = {**os.environ, "ROUTINGD_COMPILE": "1" if compiled else "0"}
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dst / "dist"),
                        str(src)], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (wheel,) = (dst / "dist").glob("routingd-*.whl")
    return wheel


def top_level_names(wheel: Path) -> set[str]:
    """The names a wheel puts at the top of site-packages (its .dist-info aside)."""
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    return {t.split(".")[0] for t in tops if not t.endswith(".dist-info")}


def check_layout(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert top_level_names(wheel) == {"routingd"}, sorted(names)
    for expected in ("routingd/daemon/__init__.py", "routingd/daemon/core/engine.py", "routingd/daemon/cli.py",
                     "routingd/simulator/runner.py", "routingd/simulator/scenarios/email-brownout.toml",
                     "routingd/simulator/scenarios/routing.toml"):     # the drills' routing file, no link
        assert expected in names
    assert "routingd = routingd.daemon.cli:main" in entry_points
    return names


@pytest.fixture(scope="module")
def pure_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"), compiled=False)


def test_the_wheel_installs_only_routingd_import_names(pure_wheel: Path) -> None:
    names = check_layout(pure_wheel)
    assert not [n for n in names if n.endswith(".so")]


def throwaway_venv(where: Path) -> Path:
    """A venv whose own site-packages receives python-daemon and the routingd wheel; routingd's
    dependencies (aiohttp, pydantic, ...) are read from this interpreter's site-packages through
    a .pth line, so that nothing but those two is installed."""
    venv.create(where, with_pip=True)
    py = where / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(site) / "routingd-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(cmd), cwd="/", env=env, capture_output=True, text=True, timeout=600)


def install_beside_python_daemon(wheel: Path, where: Path) -> Path:
    py = throwaway_venv(where)
    p = run(str(py), "-m", "pip", "install", "--quiet", "python-daemon")
    assert p.returncode == 0, p.stderr[-3000:]
    # routingd from the local wheel only, never by name from an index
    p = run(str(py), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--force-reinstall", str(wheel))
    assert p.returncode == 0, p.stderr[-3000:]
    return py


USE_BOTH = """
import daemon, routingd.daemon.core, routingd.simulator.runner
assert hasattr(daemon, "DaemonContext"), daemon.__file__
ctx = daemon.DaemonContext(detach_process=False)      # opening it would close this process's stdout
assert not ctx.is_open
print(daemon.__file__, routingd.daemon.core.__file__, routingd.daemon.core.core_build())
"""


@pytest.mark.timeout(600)
def test_python_daemon_and_routingd_installed_together_both_work(pure_wheel: Path, tmp_path: Path) -> None:
    py = install_beside_python_daemon(pure_wheel, tmp_path / "venv")
    site = Path(run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    p = run(str(py), "-c", USE_BOTH)
    assert p.returncode == 0, p.stderr[-3000:]
    daemon_file, core_file, build = p.stdout.strip().split(maxsplit=2)
    assert Path(daemon_file) == site / "daemon" / "__init__.py"              # python-daemon's own
    assert Path(core_file) == site / "routingd" / "daemon" / "core" / "__init__.py"
    assert build == "pure Python"
    p = run(str(tmp_path / "venv" / "bin" / "routingd"), "--version")
    assert p.returncode == 0 and p.stdout == "routingd 0.1.0, core pure Python\n", p.stdout + p.stderr
    # uninstalling routingd removes its files only
    assert run(str(py), "-m", "pip", "uninstall", "--yes", "--quiet", "routingd").returncode == 0
    p = run(str(py), "-c", "import daemon; daemon.DaemonContext")
    assert p.returncode == 0, p.stderr
    assert not [f for f in (site / "routingd").rglob("*") if f.is_file()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_compiled_wheel_holds_only_routingd_names_and_runs_compiled(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, compiled=True)
    names = check_layout(wheel)
    compiled = sorted(n for n in names if n.endswith(".so"))
    # exactly the modules the core and the simulator compile (routingd.daemon.core.COMPILED,
    # routingd.simulator.COMPILED) and mypyc's shared library of each
    from routingd.daemon.core import COMPILED
    from routingd.simulator import COMPILED as SIM_COMPILED
    assert [n.split(".")[0] for n in compiled] == sorted(
        [f"routingd/daemon/core/{m}" for m in (*COMPILED, "native__mypyc")]
        + [f"routingd/simulator/{m}" for m in (*SIM_COMPILED, "native__mypyc")]), compiled
    py = install_beside_python_daemon(wheel, tmp_path / "venv")
    p = run(str(tmp_path / "venv" / "bin" / "routingd"), "--version")
    assert p.returncode == 0 and p.stdout == "routingd 0.1.0, core compiled (mypyc)\n", p.stdout + p.stderr
    p = run(str(py), "-c", USE_BOTH)
    assert p.returncode == 0 and p.stdout.strip().endswith(" compiled (mypyc)"), p.stdout + p.stderr[-3000:]


@pytest.mark.timeout(600)
def test_the_shipped_drills_run_from_an_installed_wheel(pure_wheel: Path, tmp_path: Path) -> None:
    """CI jobs install the package, not the source tree (docs/ci.md): the drills and the routing
    files they name are package data, and run from anywhere (here: cwd /, no checkout)."""
    with zipfile.ZipFile(pure_wheel) as z:
        bundled = z.read("routingd/simulator/scenarios/routing.toml")
    assert bundled == (ROOT / "routing.toml").read_bytes()     # a copy of the link's target
    py = throwaway_venv(tmp_path / "venv")
    p = run(str(py), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(pure_wheel))
    assert p.returncode == 0, p.stderr[-3000:]
    routingd = str(tmp_path / "venv" / "bin" / "routingd")
    p = run(routingd, "simulate", "--list")
    assert p.returncode == 0 and "email-primary-hang" in p.stdout and "email-receipts-never-come" in p.stdout, \
        p.stdout + p.stderr
    junit = tmp_path / "junit.xml"
    p = run(routingd, "simulate", "email-primary-hang", "email-receipts-never-come", "--check",
            "--junit", str(junit))
    assert p.returncode == 0, p.stdout + p.stderr
    assert junit.read_text().count("<testsuite ") == 2
