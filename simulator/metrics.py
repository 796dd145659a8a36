"""Run metrics, fed with the engine's own event stream (RecordEvent), its StartAttempt and
Finish commands, and the driver's accepts.

Nothing here decides anything about routing: it only counts what the engine reported. Memory
does not grow with the number of messages (issue 20): the report's figures are streaming
aggregates - counts, provider stats, the time-to-deliver sketch (simulator/sketch.py, 0.5%
relative error) and one route-around tracker per outage - and per message or attempt only what
is in flight is kept, dropped when it finishes. `Trace` (run(..., trace=True), simulator/trace.py)
keeps the old per-message and per-attempt rows for what needs them whole: the plot and the tests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from ..daemon.core.engine import (ATTEMPT_QUEUED, PROVIDER_SPILLED, ATTEMPT_ENDED, ATTEMPT_SLOW, BREAKER_CLOSED, BREAKER_OPENED, DUPLICATE, FAILOVER,
                                  LATE_RECEIPT, PROVIDER_SKIPPED, Event, Finish, StartAttempt)

from .sketch import QuantileSketch
from .trace import (BREAKER_CUT, CANCELLED, CUT, DELIVERED, FAILED, NETWORK, OUTCOME_CODE, REJECTED, RUNNING,
                    TIMEOUT, Trace, attempt_code)

# the outcome codes and Trace are trace.py's; their names stay importable from here
__all__ = ["BREAKER_CUT", "CANCELLED", "CUT", "DELIVERED", "FAILED", "MESSAGE_CANCELLED", "Metrics", "NETWORK",
           "OUTCOME_CODE", "REJECTED", "ROUTE_AROUND_BLOCK", "ROUTE_AROUND_SHARE", "RUNNING", "TIMEOUT",
           "WAITED", "ProviderStats", "RouteAround", "Trace", "Window", "percentile"]

MESSAGE_CANCELLED = "message cancelled"     # the engine's detail of an attempt its message's cancel stopped
WAITED = frozenset({FAILED, TIMEOUT, NETWORK, REJECTED, CUT})   # the provider cost the message time

ROUTE_AROUND_SHARE = 0.95
ROUTE_AROUND_BLOCK = 20       # messages per block: at most 1 (5%) of every 20 may still wait

Window = tuple[str, float, float]     # an outage's (provider, start, end) in seconds


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
        return asdict(self)     # not __dict__: compiled (mypyc), the class has none


class RouteAround:
    """time_to_route_around_s of one outage (docs/simulator.md), in one pass over the messages in
    accept order, keeping only the last ROUTE_AROUND_BLOCK of them.

    Counted are the messages accepted in [start, end) whose routing reached the provider (an
    attempt on it, or a breaker skip of it). A message waited on it when an attempt on it that
    started inside the window failed, timed out or was refused. So that a long outage cannot
    dilute a slow reaction, "95% of the messages from then on" is held locally: from the
    returned moment on, every run of 20 consecutive such messages has at most one (5%) that
    waited. 0 when that holds from the outage's start; None when it never holds before `end`.
    """

    __slots__ = ("provider", "start", "end", "n", "recent", "waiting", "bad_at", "bad_pos", "allowed")

    def __init__(self, provider: str, start: float, end: float) -> None:
        self.provider = provider
        self.start = start
        self.end = end
        self.n = 0
        self.recent: deque[tuple[bool, float]] = deque(maxlen=ROUTE_AROUND_BLOCK)   # (waited, accepted at)
        self.waiting = 0                # how many of `recent` waited
        self.bad_pos = -1               # start of the last block with too many that waited
        self.bad_at = 0.0               # the accept time of the message after that block's first
        self.allowed = int((1.0 - ROUTE_AROUND_SHARE) * ROUTE_AROUND_BLOCK + 1e-9)

    def add(self, waited: bool, accepted_at: float) -> None:
        """The next counted message in accept order."""
        recent = self.recent
        if len(recent) == ROUTE_AROUND_BLOCK:
            self.waiting -= recent[0][0]
        recent.append((waited, accepted_at))
        self.waiting += waited
        self.n += 1
        if self.n >= ROUTE_AROUND_BLOCK and self.waiting > self.allowed:
            self.bad_pos = self.n - ROUTE_AROUND_BLOCK
            self.bad_at = recent[1][1]

    def seconds(self) -> float | None:
        n = self.n
        if n == 0:
            return 0.0
        if n < ROUTE_AROUND_BLOCK:      # one block of all of them, none may wait
            allowed = int((1.0 - ROUTE_AROUND_SHARE) * n + 1e-9)
            return 0.0 if self.waiting <= allowed else None
        if self.bad_pos < 0:
            return 0.0
        if self.bad_pos == n - ROUTE_AROUND_BLOCK:
            return None
        return max(0.0, self.bad_at - self.start)


class _Live:
    """A message in flight: what the report needs of it until it finishes."""

    __slots__ = ("accepted_at", "attempts", "windows", "status", "delivered_at")

    def __init__(self, accepted_at: float, windows: list[int] | None) -> None:
        self.accepted_at = accepted_at
        self.attempts = 0
        # per outage whose window holds the accept: 0 not reached, 1 reached, 2 waited (None: none)
        self.windows = windows
        self.status: str | None = None
        self.delivered_at: float | None = None


class Metrics:
    def __init__(self, providers: list[str], windows: Sequence[Window] = ()) -> None:
        self.providers = providers
        self.stats = {p: ProviderStats() for p in providers}
        self.failovers: dict[str, int] = {"provider": 0, "channel": 0}
        self.duplicates = 0
        self.breaker_events: list[tuple[float, str, str]] = []   # (at, provider, opened|closed)
        self.cancel_requests = 0        # client cancels (of messages finished or not)
        self.cancelled_attempts = 0     # attempts stopped by their message's cancel
        self.messages = 0
        self.statuses: dict[str | None, int] = {}
        self.attempts_total = 0
        self.attempts_max = 0
        self.time_to_deliver = QuantileSketch()
        self.route_around = [RouteAround(*w) for w in windows]
        self._windows = [(p, s, e) for p, s, e in windows]
        self._live: dict[int, _Live] = {}
        # running attempt of a message accepted during an outage -> (message, provider, start)
        self._attempts: dict[str, tuple[_Live, str, float]] = {}
        self._next = 0                          # the next message (index) the trackers take
        self._done: dict[int, _Live] = {}       # finished before an earlier one: waits its turn
        # the event types the metrics read, and what reads each; every other type is ignored (an
        # attempt opens from its StartAttempt command, see start_attempt)
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
        """Message `i` (0, 1, 2, ... in accept order) is accepted at `at`."""
        ws = None
        for _, s, e in self._windows:
            if s <= at < e:     # accepted during an outage: the route-around trackers want it
                ws = [0 if s <= at < e else -1 for _, s, e in self._windows]
                break
        self._live[i] = _Live(at, ws)
        self.messages += 1

    def event(self, i: int, ev: Event) -> None:
        handler = self.handlers.get(ev.type)
        if handler is not None:
            handler(i, ev)

    def start_attempt(self, i: int, cmd: StartAttempt) -> None:
        """An attempt of message `i` starts."""
        m = self._live.get(i)
        provider = cmd.provider
        self.stats[provider].attempts += 1
        if m is None:
            return
        m.attempts += 1
        if m.windows is not None:   # only the route-around trackers need the attempt again at its end
            self._attempts[cmd.attempt_id] = (m, provider, cmd.started_at)
            self._reached(m, provider, cmd.started_at, RUNNING)

    def record_attempt(self, i: int, provider: str, started_at: float, outcome: int) -> None:
        """A whole attempt at once (simulate --live reads them back finished): counts it for its
        message and the route-around trackers; the provider's stats are the caller's."""
        m = self._live.get(i)
        if m is None:
            return
        m.attempts += 1
        if m.windows is not None:
            self._reached(m, provider, started_at, outcome)

    def _reached(self, m: _Live, provider: str, started_at: float, outcome: int) -> None:
        ws = m.windows
        for k, (p, s, e) in enumerate(self._windows):
            if p == provider and ws[k] >= 0:  # type: ignore[index]
                if ws[k] == 0:  # type: ignore[index]
                    ws[k] = 1  # type: ignore[index]
                if outcome in WAITED and s <= started_at < e:
                    ws[k] = 2  # type: ignore[index]

    def cancel_requested(self, i: int, at: float) -> None:
        """The client cancels message `i` (it may have finished before: then nothing changes)."""
        self.cancel_requests += 1

    def finish(self, i: int, cmd: Finish) -> None:
        self.finish_message(i, cmd.status, cmd.delivered_at)

    def finish_message(self, i: int, status: str | None, delivered_at: float | None) -> None:
        m = self._live.pop(i, None)
        if m is None:
            return
        m.status = status
        m.delivered_at = delivered_at
        if i == self._next:     # the common case: the oldest message in flight finished
            self._take(m)
            self._next = i + 1
            if self._done:
                self._advance()
        else:
            self._done[i] = m

    def _advance(self) -> None:
        """Hand the finished messages to the aggregates in accept order (the trackers need it)."""
        done = self._done
        while self._next in done:
            self._take(done.pop(self._next))
            self._next += 1

    def _take(self, m: _Live) -> None:
        st = m.status
        self.statuses[st] = self.statuses.get(st, 0) + 1
        n = m.attempts
        self.attempts_total += n
        if n > self.attempts_max:
            self.attempts_max = n
        if st == "delivered" and m.delivered_at is not None:
            self.time_to_deliver.add(m.delivered_at - m.accepted_at)
        ws = m.windows
        if ws is not None:
            for k, w in enumerate(ws):
                if w > 0:
                    self.route_around[k].add(w == 2, m.accepted_at)

    def close(self) -> None:
        """The run is over: messages that never finished count as they are (status None)."""
        self._done.update(self._live)
        self._live.clear()
        self._attempts.clear()
        for i in sorted(self._done):
            self._take(self._done.pop(i))
            self._next = i + 1

    # ---------------------------------------------------------------- event handlers

    def _attempt_ended(self, i: int, ev: Event) -> None:
        d = ev.data
        code = attempt_code(d["outcome"], d.get("detail"))
        s = self.stats[d["provider"]]
        if code == DELIVERED:
            s.delivered += 1
        elif code == TIMEOUT:
            s.timeouts += 1
        elif code == CANCELLED or code == CUT:
            s.cancelled += 1
            if d.get("detail") == MESSAGE_CANCELLED:
                self.cancelled_attempts += 1
        else:
            s.failed += 1
            if d.get("status_code") == 429:
                s.throttled += 1
        if self._attempts:
            entry = self._attempts.pop(d["attempt_id"], None)
            # CUT is a waited outcome: the attempt held its message up to the breaker's opening
            if entry is not None and code in WAITED:
                m, provider, started_at = entry
                self._reached(m, provider, started_at, code)

    def _late_receipt(self, i: int, ev: Event) -> None:
        d = ev.data
        if d.get("status") == "delivered":
            self.stats[d["provider"]].late_receipts += 1

    def _slow(self, i: int, ev: Event) -> None:
        self.stats[ev.data["provider"]].slow += 1

    def _skipped(self, i: int, ev: Event) -> None:
        p = ev.data["provider"]
        self.stats[p].skipped += 1
        m = self._live.get(i)
        if m is not None and m.windows is not None:
            ws = m.windows
            for k, (wp, _, _) in enumerate(self._windows):
                if wp == p and ws[k] == 0:
                    ws[k] = 1

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

    def count(self, status: str) -> int:
        """Finished messages with this status (all of them once the run is closed)."""
        return self.statuses.get(status, 0)

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
