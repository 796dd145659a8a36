"""The sans-IO heart of routingd: policy model, timeout resolution, engine, breakers.

Nothing in this package may do I/O, import an event loop or read a clock: time and outcomes
are passed in, commands come out. tests/test_core_purity.py enforces it.

Compiled or not (docs/architecture.md, "The compiled core"). An install compiles `commands`,
`engine` (with `deadlines`, `outcomes`, `resume`, `walk`), `health`, `plan` and `tree` with mypyc (setup.py), and the simulator's per-message
modules (routingd.simulator.COMPILED); each compiled module carries the SHA-256 of the source it
was built from. Python prefers an extension module to the .py file beside it, so importing this
package (and routingd.simulator, through `check_compiled`) checks that each compiled module was
built from the source beside it and otherwise raises ImportError: an edited source never runs as
its stale compiled version.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from .errors import RoutingdError

COMPILED = ("commands", "deadlines", "engine", "health", "outcomes", "plan", "resume", "tree", "walk")     # keep in step with setup.py COMPILED


class StaleCompiledCore(RoutingdError, ImportError):
    """A compiled core module was built from another version of its source."""


def check_compiled(package: str, folder: Path, names: tuple[str, ...]) -> str:
    """"compiled (mypyc)" or "pure Python" for the modules `names` of `package`, whose sources are
    in `folder`; raises StaleCompiledCore for a stale or partial build."""
    built: dict[str, str | None] = {}
    for name in names:
        module = importlib.import_module(f"{package}.{name}")
        built[name] = getattr(module, "__source_sha256__", None)
        source = folder / f"{name}.py"
        if built[name] is not None and source.exists() \
                and hashlib.sha256(source.read_bytes()).hexdigest() != built[name]:
            raise StaleCompiledCore(
                f"{source} changed since it was compiled: rebuild the core with `make venv` "
                f"(or `pip install -e .`; ROUTINGD_COMPILE=0 for the pure-Python core)")
    if all(h is None for h in built.values()):
        return "pure Python"
    if any(h is None for h in built.values()):
        raise StaleCompiledCore(f"only part of {package} is compiled ({built}): rebuild it with `make venv`")
    return "compiled (mypyc)"


_BUILD = check_compiled(__name__, Path(__file__).resolve().parent, COMPILED)


def core_build() -> str:
    """"compiled (mypyc)" or "pure Python": which engine this process runs."""
    return _BUILD
