"""Run metrics, fed with the engine's own event stream (RecordEvent), its StartAttempt and
Finish commands, and the driver's accepts.

Nothing here decides anything about routing: it only counts what the engine reported. Per
message it keeps the accept time, status and first-delivery time; per attempt a compact row
(message, provider, start, end, outcome) that the report (route-around times) and the plot use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..daemon.core.engine import (ATTEMPT_QUEUED, PROVIDER_SPILLED, ATTEMPT_ENDED, ATTEMPT_SLOW, BREAKER_CLOSED, BREAKER_OPENED, DUPLICATE, FAILOVER,
                                  LATE_RECEIPT, PROVIDER_SKIPPED, Event, Finish, StartAttempt)

# attempt outcome codes in the compact rows
RUNNING, DELIVERED, FAILED, TIMEOUT, NETWORK, REJECTED, CANCELLED = range(7)
OUTCOME_CODE = {"delivered": DELIVERED, "failed": FAILED, "timeout": TIMEOUT, "network": NETWORK,
                "rejected": REJECTED, "cancelled": CANCELLED}
MESSAGE_CANCELLED = "message cancelled"     # the engine's detail of an attempt its message's cancel stopped
WAITED = frozenset({FAILED, TIMEOUT, NETWORK, REJECTED})   # the provider cost the message time


@dataclass
class ProviderStats:
    attempts: int = 0
    delivered: int = 0          # attempts that ended delivered (2xx, or a delivered receipt)
    failed: int = 0             # retryable or rejecting status, connection refused
    timeouts: int = 0           # attempt or receipt deadline hit
    cancelled: int = 0          # stopped because the message/channel finished elsewhere
    skipped: int = 0            # not tried: breaker open
    late_receipts: int = 0      # delivered receipts that came after the attempt had ended
    breaker_opened: int = 0
    slow: int = 0               # attempts still running at their breaker's slow-call mark (breaker.slow)
    queued: int = 0             # tries that waited their turn under routingd's rate limit on it
    spilled: int = 0            # tries that spilled over to the next provider: their turn came too late
    throttled: int = 0          # attempts the provider answered 429 (in `failed` too): its rate limit hit

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Metrics:
    providers: list[str]
    accepted_at: list[float] = field(default_factory=list)   # per message index
    route: list[str] = field(default_factory=list)
    status: list[str | None] = field(default_factory=list)
    delivered_at: list[float | None] = field(default_factory=list)
    finished_at: list[float | None] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    # one row per attempt
    a_msg: list[int] = field(default_factory=list)
    a_prov: list[int] = field(default_factory=list)
    a_start: list[float] = field(default_factory=list)
    a_end: list[float | None] = field(default_factory=list)
    a_outcome: list[int] = field(default_factory=list)
    # one row per breaker skip
    s_msg: list[int] = field(default_factory=list)
    s_prov: list[int] = field(default_factory=list)
    s_at: list[float] = field(default_factory=list)
    failovers: dict[str, int] = field(default_factory=lambda: {"provider": 0, "channel": 0})
    duplicates: int = 0
    stats: dict[str, ProviderStats] = field(default_factory=dict)
    breaker_events: list[tuple[float, str, str]] = field(default_factory=list)  # (at, provider, opened|closed)
    cancel_at: dict[int, float] = field(default_factory=dict)   # message -> when the client cancelled it
    cancelled_attempts: int = 0     # attempts stopped by their message's cancel

    def __post_init__(self) -> None:
        self._pidx = {p: i for i, p in enumerate(self.providers)}
        self.stats = {p: ProviderStats() for p in self.providers}
        self._row: dict[str, int] = {}
        # the event types the metrics read, and what reads each; every other type is ignored (an
        # attempt's row opens from its StartAttempt command, see start_attempt)
        self.handlers: dict[str, Callable[[int, Event], None]] = {
            ATTEMPT_ENDED: self._attempt_ended,
            PROVIDER_SKIPPED: self._skipped,
            ATTEMPT_SLOW: self._slow,
            FAILOVER: self._failover,
            DUPLICATE: self._duplicate,
            LATE_RECEIPT: self._late_receipt,
            BREAKER_OPENED: self._breaker,
            BREAKER_CLOSED: self._breaker,
            PROVIDER_SPILLED: self._spilled,
            ATTEMPT_QUEUED: self._queued,
        }

    # ---------------------------------------------------------------- inputs

    def accept(self, i: int, at: float, route: str) -> None:
        self.accepted_at.append(at)
        self.route.append(route)
        self.status.append(None)
        self.delivered_at.append(None)
        self.finished_at.append(None)
        self.attempts.append(0)

    def event(self, i: int, ev: Event) -> None:
        handler = self.handlers.get(ev.type)
        if handler is not None:
            handler(i, ev)

    def start_attempt(self, i: int, cmd: StartAttempt) -> None:
        """An attempt of message `i` starts: open its row."""
        provider = cmd.provider
        self._row[cmd.attempt_id] = len(self.a_msg)
        self.a_msg.append(i)
        self.a_prov.append(self._pidx[provider])
        self.a_start.append(cmd.started_at)
        self.a_end.append(None)
        self.a_outcome.append(RUNNING)
        self.attempts[i] += 1
        self.stats[provider].attempts += 1

    def cancel_requested(self, i: int, at: float) -> None:
        """The client cancels message `i` (it may have finished before: then nothing changes)."""
        self.cancel_at[i] = at

    def finish(self, i: int, cmd: Finish) -> None:
        self.status[i] = cmd.status
        self.finished_at[i] = cmd.at
        self.delivered_at[i] = cmd.delivered_at

    # ---------------------------------------------------------------- event handlers

    def _attempt_ended(self, i: int, ev: Event) -> None:
        d = ev.data
        row = self._row.get(d["attempt_id"])
        if row is None:
            return
        code = OUTCOME_CODE.get(d["outcome"], FAILED)
        self.a_end[row] = ev.at
        self.a_outcome[row] = code
        s = self.stats[d["provider"]]
        if code == DELIVERED:
            s.delivered += 1
        elif code == TIMEOUT:
            s.timeouts += 1
        elif code == CANCELLED:
            s.cancelled += 1
            if d.get("detail") == MESSAGE_CANCELLED:
                self.cancelled_attempts += 1
        else:
            s.failed += 1
            if d.get("status_code") == 429:
                s.throttled += 1

    def _late_receipt(self, i: int, ev: Event) -> None:
        d = ev.data
        if d.get("status") == "delivered":
            self.stats[d["provider"]].late_receipts += 1

    def _slow(self, i: int, ev: Event) -> None:
        self.stats[ev.data["provider"]].slow += 1

    def _skipped(self, i: int, ev: Event) -> None:
        p = ev.data["provider"]
        self.stats[p].skipped += 1
        self.s_msg.append(i)
        self.s_prov.append(self._pidx[p])
        self.s_at.append(ev.at)

    def _spilled(self, i: int, ev: Event) -> None:
        self.stats[ev.data["provider"]].spilled += 1

    def _queued(self, i: int, ev: Event) -> None:
        self.stats[ev.data["provider"]].queued += 1

    def _failover(self, i: int, ev: Event) -> None:
        kind = ev.data.get("kind", "provider")
        self.failovers[kind] = self.failovers.get(kind, 0) + 1

    def _duplicate(self, i: int, ev: Event) -> None:
        self.duplicates += 1

    def _breaker(self, i: int, ev: Event) -> None:
        p = ev.data["provider"]
        change = ev.type.removeprefix("breaker_")
        if change == "opened":
            self.stats[p].breaker_opened += 1
        self.breaker_events.append((ev.at, p, change))

    # ---------------------------------------------------------------- summaries

    @property
    def messages(self) -> int:
        return len(self.accepted_at)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status if s == status)

    def times_to_deliver(self) -> list[float]:
        return [d - a for a, d, s in zip(self.accepted_at, self.delivered_at, self.status)
                if s == "delivered" and d is not None]

    def summary(self) -> dict[str, Any]:
        return {"messages": self.messages, "delivered": self.count("delivered"),
                "undeliverable": self.count("undeliverable"), "expired": self.count("expired"),
                "cancelled": self.count("cancelled")}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac
