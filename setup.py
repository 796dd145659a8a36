"""Build step: the import names and the compiled core (all other metadata is in pyproject.toml).

Import names. The folders daemon/ and simulator/ install as `routingd.daemon` and
`routingd.simulator` (`routingd` is a namespace package): nothing is installed as a top-level
`daemon` or `simulator`, so routingd installs beside python-daemon (tests/test_packaging.py).

Compiled core (docs/architecture.md, "The compiled core"). daemon/core/commands.py, engine.py (with
deadlines.py, outcomes.py, resume.py, walk.py), health.py, plan.py and tree.py are also compiled with mypyc (https://mypyc.readthedocs.io), which runs the same code about
twice as fast; so is the simulator's per-message path (simulator/runner.py, metrics.py,
invariants.py, providers.py, sketch.py, trace.py, readers.py: docs/performance.md "Simulator: a
day of traffic"). mypyc names a module after its path, so it compiles copies staged under
build/mypyc/routingd/ (daemon/ and simulator/ whole: mypy follows the imports), each compiled
one with the SHA-256 of its source appended as `__source_sha256__`: routingd.daemon.core and
routingd.simulator refuse to import a compiled module whose source has changed since. The
extensions (and the two shared libraries, routingd.daemon.core.native__mypyc and
routingd.simulator.native__mypyc) land in the wheel, or beside the sources in an editable install
(`make venv` rebuilds them whenever a compiled source changes).

    ROUTINGD_COMPILE=0 pip install .     skip the compilation (the pure-Python core, ~2x slower)

Without a C compiler the build warns and installs the pure-Python core.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
FOLDERS = {"routingd.daemon": "daemon", "routingd.simulator": "simulator"}   # import name: folder
COMPILED = ("commands", "deadlines", "engine", "health", "outcomes", "plan", "resume", "tree", "walk")      # keep in step with daemon/core/__init__.py COMPILED
# keep in step with simulator/__init__.py COMPILED (and the Makefile's CORE_SOURCES)
SIM_COMPILED = ("draws", "happenings", "invariants", "metrics", "providers", "readers", "runner", "sketch", "trace")
# folder -> (its modules compiled, the group whose shared library they share)
GROUPS = {"daemon/core": (COMPILED, "routingd.daemon.core.native"),
          "simulator": (SIM_COMPILED, "routingd.simulator.native")}
STAGE = Path("build") / "mypyc"


def _packages() -> list[str]:
    return [f"{name}.{sub}" if sub else name
            for name, folder in FOLDERS.items() for sub in ("", *find_packages(folder))]


class BuildCore(build_ext):
    """build_ext that installs the pure-Python core when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:      # no compiler, no headers: the pure-Python core still works
            print(f"routingd: compiling the core failed ({e}); installing the pure-Python core",
                  file=sys.stderr)
            for ext in self.extensions:     # never leave some modules compiled and others not
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)


def _stage() -> list[tuple[list[str], str]]:
    """Copies of daemon/**.py and simulator/**.py under build/mypyc/routingd/, so that mypyc names
    them routingd.daemon.* and routingd.simulator.*; the compiled ones carry the hash of their
    source. Returns mypycify's groups: (the staged paths to compile, the group's name)."""
    shutil.rmtree(STAGE, ignore_errors=True)
    (STAGE / "routingd").mkdir(parents=True)
    (STAGE / "routingd" / "__init__.py").write_text("")
    compiled = {HERE / folder / f"{m}.py" for folder, (mods, _) in GROUPS.items() for m in mods}
    for folder in FOLDERS.values():
        for src in (HERE / folder).rglob("*.py"):
            dst = STAGE / "routingd" / src.relative_to(HERE)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_bytes()
            if src in compiled:
                text += f'\n__source_sha256__ = "{hashlib.sha256(text).hexdigest()}"\n'.encode()
            dst.write_bytes(text)
    return [([str(STAGE / "routingd" / folder / f"{m}.py") for m in mods], group)
            for folder, (mods, group) in GROUPS.items()]


def _extensions() -> list:
    if os.environ.get("ROUTINGD_COMPILE", "1").strip().lower() in ("0", "no", "false", "off"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("routingd: mypyc is not available; installing the pure-Python core", file=sys.stderr)
        return []
    try:
        groups = _stage()
        # one shared library per group: the daemon's never holds the simulator's code
        return mypycify([p for paths, _ in groups for p in paths], opt_level="3", separate=groups)
    except (Exception, SystemExit) as e:    # mypyc exits on a type error: say so, install pure Python
        print(f"routingd: mypyc could not compile the core ({e!r}); installing the pure-Python core",
              file=sys.stderr)
        return []


setup(package_dir=FOLDERS, packages=_packages(), ext_modules=_extensions(), cmdclass={"build_ext": BuildCore})
