"""The sans-IO heart of routingd: policy model, timeout resolution, engine, breakers.

Nothing in this package may do I/O, import an event loop or read a clock: time and outcomes
are passed in, commands come out. tests/test_core_purity.py enforces it.

Compiled or not. An install compiles `engine`, `health` and `plan` with mypyc (setup.py), which
runs the same code about twice as fast. Python prefers an extension module to the .py file of the
same name, so an extension built from an older source would silently shadow an edited one. This
package therefore checks, before any of those modules is imported, that each compiled one was
built from the very source beside it (SHA-256 recorded by the build in _native_build.py). If one
was not, or ROUTINGD_PURE_PYTHON=1 is set, all three are imported from their sources instead:
always the code you read, at worst slower. `core_build()` says which one is running and why.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

NATIVE_MODULES = ("engine", "health", "plan")     # keep in step with setup.py COMPILED
_HERE = Path(__file__).resolve().parent
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _compiled_beside(name: str) -> bool:
    return any((_HERE / (name + suffix)).exists() for suffix in _EXTENSION_SUFFIXES)


def _why_source() -> str | None:
    """Why the compiled modules must not be used (None: they may be)."""
    if os.environ.get("ROUTINGD_PURE_PYTHON", "").strip().lower() not in ("", "0", "no", "false", "off"):
        return "ROUTINGD_PURE_PYTHON is set"
    if not any(_compiled_beside(m) for m in NATIVE_MODULES):
        return "not compiled (ROUTINGD_COMPILE=0 or no C compiler at install)"
    record = _HERE / "_native_build.py"
    sources: dict[str, str] = {}
    if record.exists():
        spec = importlib.util.spec_from_file_location(f"{__name__}._native_build", record)
        if spec is not None and spec.loader is not None:
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sources = dict(getattr(mod, "SOURCES", {}))
    for m in NATIVE_MODULES:
        if not _compiled_beside(m) or m not in sources:
            return f"the compiled build is incomplete ({m} has no matching extension)"
        if hashlib.sha256((_HERE / f"{m}.py").read_bytes()).hexdigest() != sources[m]:
            return f"daemon/core/{m}.py changed since it was compiled (reinstall, e.g. `make venv`)"
    return None


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the NATIVE_MODULES from their .py files, past any extension module beside them."""

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        pkg, _, name = fullname.rpartition(".")
        if pkg != __name__ or name not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


_WHY_SOURCE = _why_source()
if _WHY_SOURCE is not None and _compiled_beside("engine"):
    sys.meta_path.insert(0, _FromSource())


def core_build() -> str:
    """"compiled (mypyc)" or "pure Python (<why>)": which engine this process runs."""
    from . import engine
    if (engine.__file__ or "").endswith(_EXTENSION_SUFFIXES):
        return "compiled (mypyc)"
    return f"pure Python ({_WHY_SOURCE or 'source import'})"
