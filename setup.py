"""Build step: compile the sans-IO routing core with mypyc (all other metadata is in pyproject.toml).

daemon/core/engine.py, health.py and plan.py are ordinary typed Python. When routingd is
installed they are also compiled to C extensions with mypyc (https://mypyc.readthedocs.io), which
runs the same code about twice as fast; the daemon and the simulator both use the compiled
modules, so they still drive one and the same engine. Nothing else changes: the sources stay the
truth, and daemon/core/__init__.py falls back to them when a compiled module does not match its
source (see there).

    ROUTINGD_COMPILE=0 pip install .     skip the compilation (pure Python, ~2x slower core)

Without a C compiler the build warns and installs the pure-Python core. The build records a
SHA-256 of each compiled source in daemon/core/_native_build.py so that an edited source is
never shadowed by a stale extension.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CORE = "daemon/core"
COMPILED = ("engine", "health", "plan")      # keep in step with daemon/core/__init__.py NATIVE_MODULES
RECORD = "_native_build.py"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BuildCore(build_ext):
    """build_ext that writes, next to the extensions it built, the hashes of their sources."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:      # no compiler, no headers: the pure-Python core still works
            print(f"routingd: compiling the core failed ({e}); installing the pure-Python core",
                  file=sys.stderr)
            return
        built = [m for m in COMPILED if Path(self.get_ext_fullpath(f"routingd.daemon.core.{m}")).exists()]
        if len(built) != len(COMPILED):
            print("routingd: not every core module compiled; installing the pure-Python core",
                  file=sys.stderr)
            return
        out = Path(self.get_ext_fullpath("routingd.daemon.core.engine")).parent / RECORD
        lines = ['"""Written by setup.py at build time: the sources the compiled core was built from."""',
                 "", "SOURCES = {"]
        lines += [f'    "{m}": "{_sha256(HERE / CORE / (m + ".py"))}",' for m in COMPILED]
        lines += ["}", ""]
        out.write_text("\n".join(lines))


def _extensions() -> list:
    if os.environ.get("ROUTINGD_COMPILE", "1").strip().lower() in ("0", "no", "false", "off"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("routingd: mypyc is not available; installing the pure-Python core", file=sys.stderr)
        return []
    try:
        return mypycify([f"{CORE}/{m}.py" for m in COMPILED], opt_level="3", group_name="routingd_core")
    except (Exception, SystemExit) as e:    # mypyc exits on a type error: say so, install pure Python
        print(f"routingd: mypyc could not compile the core ({e!r}); installing the pure-Python core",
              file=sys.stderr)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCore})
