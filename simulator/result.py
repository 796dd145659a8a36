"""What a simulated run hands back (`RunResult`: the setup, the metrics, the checker, the trace)
and the route-around windows its report is measured over (`outage_windows`); simulator/runner.py
makes one, so does the live run (simulator/live.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .invariants import HierarchyChecker
from .metrics import Metrics, Window
from .setup import RunSetup
from .trace import Trace


@dataclass
class RunResult:
    setup: RunSetup
    metrics: Metrics
    checker: HierarchyChecker
    pending: int            # messages that never reached a terminal state (should be 0)
    sim_end_s: float
    wall_s: float
    trace: Trace | None = None      # every message and attempt, with run(..., trace=True)


def outage_windows(setup: RunSetup) -> list[Window]:
    """The route-around windows of the report: each outage, cut at the end of the arrivals."""
    duration = setup.scenario.duration_s
    return [(o.provider, o.start_s, min(o.end_s, duration)) for o in setup.outages]
