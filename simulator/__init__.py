"""The outage simulator: SimPy drives the daemon's own routing engine (docs/simulator.md).

Its per-message modules are compiled with mypyc like the core (setup.py, docs/architecture.md
"The compiled core"): importing this package checks, as routingd.daemon.core does for its own,
that each compiled module was built from the source beside it (StaleCompiledCore otherwise).
"""

from __future__ import annotations

from pathlib import Path

from ..daemon.core import check_compiled

# keep in step with setup.py SIM_COMPILED (and the Makefile's CORE_SOURCES)
COMPILED = ("draws", "happenings", "invariants", "metrics", "providers", "readers", "runner", "sketch",
            "trace")

_BUILD = check_compiled(__name__, Path(__file__).resolve().parent, COMPILED)


def simulator_build() -> str:
    """"compiled (mypyc)" or "pure Python": which simulator driver this process runs."""
    return _BUILD
