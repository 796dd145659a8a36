"""Build step: the import names and the compiled core (all other metadata is in pyproject.toml).

Import names. The folders daemon/ and simulator/ install as `routingd.daemon` and
`routingd.simulator` (`routingd` is a namespace package): nothing is installed as a top-level
`daemon` or `simulator`, so routingd installs beside python-daemon (tests/test_packaging.py).

Compiled core (docs/architecture.md, "The compiled core"). daemon/core/commands.py, engine.py,
health.py, plan.py and tree.py are also compiled with mypyc (https://mypyc.readthedocs.io), which runs the same code about
twice as fast. mypyc names a module after its path, so it compiles copies staged under
build/mypyc/routingd/daemon/core/, each with the SHA-256 of its source appended as
`__source_sha256__`: routingd.daemon.core refuses to import a compiled module whose source has
changed since. The extensions (and their shared library, routingd.daemon.core.native__mypyc) land
in the wheel, or beside the sources in an editable install (`make venv` rebuilds them whenever a
compiled source changes).

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
COMPILED = ("commands", "engine", "health", "plan", "tree")      # keep in step with daemon/core/__init__.py COMPILED
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


def _stage() -> list[str]:
    """Copies of daemon/core/*.py under build/mypyc/routingd/daemon/core/, so that mypyc names
    them routingd.daemon.core.*; the compiled ones carry the hash of their source."""
    core = STAGE / "routingd" / "daemon" / "core"
    shutil.rmtree(STAGE, ignore_errors=True)
    core.mkdir(parents=True)
    for pkg in (STAGE / "routingd", STAGE / "routingd" / "daemon"):
        (pkg / "__init__.py").write_text("")
    for src in (HERE / "daemon" / "core").glob("*.py"):
        text = src.read_bytes()
        if src.stem in COMPILED:
            text += f'\n__source_sha256__ = "{hashlib.sha256(text).hexdigest()}"\n'.encode()
        (core / src.name).write_bytes(text)
    return [str(core / f"{m}.py") for m in COMPILED]


def _extensions() -> list:
    if os.environ.get("ROUTINGD_COMPILE", "1").strip().lower() in ("0", "no", "false", "off"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("routingd: mypyc is not available; installing the pure-Python core", file=sys.stderr)
        return []
    try:
        return mypycify(_stage(), opt_level="3", group_name="routingd.daemon.core.native")
    except (Exception, SystemExit) as e:    # mypyc exits on a type error: say so, install pure Python
        print(f"routingd: mypyc could not compile the core ({e!r}); installing the pure-Python core",
              file=sys.stderr)
        return []


setup(package_dir=FOLDERS, packages=_packages(), ext_modules=_extensions(), cmdclass={"build_ext": BuildCore})
