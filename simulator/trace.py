"""`Trace` (run(..., trace=True)): every message and attempt of a run kept whole, for what needs
them whole (the plot, the tests); memory grows with the run, unlike simulator/metrics.py's
streaming aggregates. Also the attempt outcome codes of its compact rows, which the metrics
share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..daemon.core.engine import ATTEMPT_ENDED, PROVIDER_SKIPPED, Event, Finish, StartAttempt

# attempt outcome codes in the compact rows
RUNNING, DELIVERED, FAILED, TIMEOUT, NETWORK, REJECTED, CANCELLED = range(7)
CUT = 7         # "cancelled" because the provider's breaker opened: it held its message up to the cut
BREAKER_CUT = "breaker opened"      # the engine's detail of an attempt cut over when its breaker opened


def attempt_code(outcome: str | None, detail: str | None) -> int:
    """An ended attempt's outcome code; CUT for one its breaker's opening cut (it made its
    message wait, where other cancels did not)."""
    code = OUTCOME_CODE.get(outcome or "", FAILED)
    return CUT if code == CANCELLED and detail == BREAKER_CUT else code
OUTCOME_CODE = {"delivered": DELIVERED, "failed": FAILED, "timeout": TIMEOUT, "network": NETWORK,
                "rejected": REJECTED, "cancelled": CANCELLED}


@dataclass
class Trace:
    """Every message and attempt of a run, whole (run(..., trace=True)): memory grows with them.

    Per message index: accept time, route, status, first-delivery and finish times, attempts;
    per attempt a compact row (message, provider, start, end, outcome); per breaker skip one."""

    providers: list[str]
    accepted_at: list[float] = field(default_factory=list)
    route: list[str] = field(default_factory=list)
    status: list[str | None] = field(default_factory=list)
    delivered_at: list[float | None] = field(default_factory=list)
    finished_at: list[float | None] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    a_msg: list[int] = field(default_factory=list)
    a_prov: list[int] = field(default_factory=list)
    a_start: list[float] = field(default_factory=list)
    a_end: list[float | None] = field(default_factory=list)
    a_outcome: list[int] = field(default_factory=list)
    s_msg: list[int] = field(default_factory=list)
    s_prov: list[int] = field(default_factory=list)
    s_at: list[float] = field(default_factory=list)
    cancel_at: dict[int, float] = field(default_factory=dict)   # message -> when the client cancelled it

    def __post_init__(self) -> None:
        self._pidx = {p: i for i, p in enumerate(self.providers)}
        self._row: dict[str, int] = {}
        self.handlers: dict[str, Callable[[int, Event], None]] = {
            ATTEMPT_ENDED: self._attempt_ended, PROVIDER_SKIPPED: self._skipped}

    def accept(self, i: int, at: float, route: str) -> None:
        self.accepted_at.append(at)
        self.route.append(route)
        self.status.append(None)
        self.delivered_at.append(None)
        self.finished_at.append(None)
        self.attempts.append(0)

    def start_attempt(self, i: int, cmd: StartAttempt) -> None:
        self._row[cmd.attempt_id] = len(self.a_msg)
        self.a_msg.append(i)
        self.a_prov.append(self._pidx[cmd.provider])
        self.a_start.append(cmd.started_at)
        self.a_end.append(None)
        self.a_outcome.append(RUNNING)
        self.attempts[i] += 1

    def cancel_requested(self, i: int, at: float) -> None:
        self.cancel_at[i] = at

    def finish(self, i: int, cmd: Finish) -> None:
        self.status[i] = cmd.status
        self.finished_at[i] = cmd.at
        self.delivered_at[i] = cmd.delivered_at

    def _attempt_ended(self, i: int, ev: Event) -> None:
        row = self._row.get(ev.data["attempt_id"])
        if row is not None:
            self.a_end[row] = ev.at
            self.a_outcome[row] = attempt_code(ev.data["outcome"], ev.data.get("detail"))

    def _skipped(self, i: int, ev: Event) -> None:
        self.s_msg.append(i)
        self.s_prov.append(self._pidx[ev.data["provider"]])
        self.s_at.append(ev.at)

    @property
    def messages(self) -> int:
        return len(self.accepted_at)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status if s == status)

    def times_to_deliver(self) -> list[float]:
        return [d - a for a, d, s in zip(self.accepted_at, self.delivered_at, self.status)
                if s == "delivered" and d is not None]
