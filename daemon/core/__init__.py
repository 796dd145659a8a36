"""The sans-IO heart of routingd: policy model, timeout resolution, engine, breakers.

Nothing in this package may do I/O, import an event loop or read a clock: time and outcomes
are passed in, commands come out. tests/test_core_purity.py enforces it.

Compiled or not (docs/architecture.md, "The compiled core"). An install compiles `commands`,
`engine`, `health`, `plan` and `tree` with mypyc (setup.py); each compiled module carries the SHA-256 of the
source it was built from. Python prefers an extension module to the .py file beside it, so
importing this package checks that each compiled module was built from the source beside it and
otherwise raises ImportError: an edited source never runs as its stale compiled version.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from .errors import RoutingdError

COMPILED = ("commands", "engine", "health", "plan", "tree")     # keep in step with setup.py COMPILED


class StaleCompiledCore(RoutingdError, ImportError):
    """A compiled core module was built from another version of its source."""


def _check_compiled() -> str:
    """"compiled (mypyc)" or "pure Python"; raises StaleCompiledCore for a stale or partial build."""
    here = Path(__file__).resolve().parent
    built: dict[str, str | None] = {}
    for name in COMPILED:
        module = importlib.import_module(f"{__name__}.{name}")
        built[name] = getattr(module, "__source_sha256__", None)
        source = here / f"{name}.py"
        if built[name] is not None and source.exists() \
                and hashlib.sha256(source.read_bytes()).hexdigest() != built[name]:
            raise StaleCompiledCore(
                f"{source} changed since it was compiled: rebuild the core with `make venv` "
                f"(or `pip install -e .`; ROUTINGD_COMPILE=0 for the pure-Python core)")
    if all(h is None for h in built.values()):
        return "pure Python"
    if any(h is None for h in built.values()):
        raise StaleCompiledCore(f"only part of the core is compiled ({built}): rebuild it with `make venv`")
    return "compiled (mypyc)"


_BUILD = _check_compiled()


def core_build() -> str:
    """"compiled (mypyc)" or "pure Python": which engine this process runs."""
    return _BUILD
