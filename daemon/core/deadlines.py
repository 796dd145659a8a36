"""Deadlines and time: which comes due next, what firing one does, moving every time held.

Module-level functions that take the `Delivery` (daemon/core/engine.py). Every deadline set
(message, channel, attempt and receipt, back-off wake-up, slow-call mark) goes on the delivery's
min-heap `_due` (Delivery._push); `earliest` pops the entries whose node has moved on and
answers the first live one by (time, rank, plan order: daemon/core/tree.py RANK_*); `advance`
fires each one due in that order (docs/configuration.md "Timeout precedence"); `rebase` moves
every time the delivery holds when the driver re-anchors its clock.
"""

from __future__ import annotations

from heapq import heappop
from typing import TYPE_CHECKING

from .commands import ATTEMPT_SLOW, CHANNEL_DEADLINE, MESSAGE_DEADLINE, RECEIPT_TIMEOUT, CancelAttempt
from .outcomes import cut_run, retry_or_fail
from .tree import ATTEMPTING, AWAITING, BACKOFF, RANK_ATTEMPT, RANK_BACKOFF, RANK_CHANNEL, RANK_MESSAGE, \
    RANK_SLOW, _Channel, _Node, _Run
from .walk import cancel_under, complete, finish, try_run

if TYPE_CHECKING:      # the type only: engine.py imports this module (no import cycle at run time)
    from .engine import Delivery


def _moved(t: float | None, delta: float) -> float | None:
    """An optional time on a time axis moved by `delta` (rebase); None stays None."""
    return None if t is None else t + delta


def advance(d: Delivery, now: float, inclusive: bool) -> None:
    """Fire every deadline that has come due, earliest first; message before channel before attempt.

    Leaves the earliest deadline still ahead in d._want (None once terminal)."""
    # Each pass ends a node, starts an attempt or fires one attempt's slow mark or back-off:
    # a bound that grows with the plan and the attempts made, never hit by a sound machine.
    passes = 0
    while passes <= 64 + 4 * (d.root.end + len(d.attempts)):
        passes += 1
        if d.status != "pending":
            d._want = None
            return
        t, rank, node = earliest(d)
        if t > now or (t == now and not inclusive):
            d._want = t
            return
        if rank == RANK_MESSAGE:
            d._emit(MESSAGE_DEADLINE, t)
            finish(d, t, deadline_hit=True)
        elif rank == RANK_CHANNEL:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Channel)
            d._emit(CHANNEL_DEADLINE, t, channel=node.step.channel)
            cancel_under(d, node, t, "timeout", "channel deadline")
            complete(d, node, "failed", t, reason="timeout")
        elif rank == RANK_BACKOFF:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Run)
            node.wake_at = None
            try_run(d, node, t)
        elif rank == RANK_SLOW:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Run) and node.attempt
            # slow-call mark: the attempt runs on, but counts as a breaker failure now
            node.slow_at = None
            rec = node.attempt
            d._emit(ATTEMPT_SLOW, t, attempt_id=rec.attempt_id, channel=rec.channel,
                    provider=rec.provider, after_s=t - rec.started_at)
            d._record_health(node, False, t)
            node.slow_counted = True
            if d.health.blocks(rec.provider, t):
                # the breaker is open now (this mark opened it, or re-opened it after a
                # half-open probe that is this very attempt): fail over at once, as
                # on_provider_unhealthy does for every other message's attempts on it
                cut_run(d, node, t)
        else:                                           # RANK_ATTEMPT
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Run) and node.attempt
            rec = node.attempt
            if node.state == ATTEMPTING:
                d._out.append(CancelAttempt(rec.attempt_id, "attempt deadline"))
                d._end_attempt(rec, "timeout", None, t)
                d._record_health(node, False, t)
                retry_or_fail(d, node, t, None, "timeout", retryable=d.plan.failover.timeout)
            else:                                       # awaiting its receipt
                d._end_attempt(rec, "timeout", rec.status_code, t)
                d._emit(RECEIPT_TIMEOUT, t, attempt_id=rec.attempt_id)
                d._record_health(node, False, t)
                retry_or_fail(d, node, t, None, "receipt timeout")
    raise RuntimeError("engine: deadline processing did not settle")  # pragma: no cover


def earliest(d: Delivery) -> tuple[float, int, _Node | None]:
    """The first deadline by (time, rank, plan order): RANK_MESSAGE, RANK_CHANNEL, RANK_ATTEMPT
    (its receipt too), RANK_BACKOFF, RANK_SLOW (daemon/core/tree.py)."""
    due = d._due
    md = d.message_deadline
    while due:
        t, rank, _pre, _seq, node = due[0]
        if live(d, t, rank, node):
            if md <= t:
                break
            return t, rank, node
        heappop(due)
    return md, RANK_MESSAGE, None


def live(d: Delivery, t: float, rank: int, node: _Node) -> bool:
    """Whether the heap entry (t, rank, node) is still a deadline of `node`."""
    if rank == RANK_CHANNEL:
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(node, _Channel)
        return node.result is None and node.deadline == t and not node.holding
    if TYPE_CHECKING:           # narrowing for the type checker only: no isinstance per call
        assert isinstance(node, _Run)
    st = node.state
    rec = node.attempt
    if rank == RANK_ATTEMPT:
        if st == ATTEMPTING:
            return rec is not None and rec.deadline == t
        return st == AWAITING and rec is not None and rec.receipt_deadline == t
    if rank == RANK_BACKOFF:
        return st == BACKOFF and node.wake_at == t
    return st == ATTEMPTING and node.slow_at == t


def rebase(d: Delivery, delta: float) -> None:
    """Delivery.rebase: every time held moves by `delta`, so nothing fires earlier or later."""
    d.accepted_at += delta
    d.message_deadline += delta
    d.finished_at = _moved(d.finished_at, delta)
    d.delivered_at = _moved(d.delivered_at, delta)
    for rec in d.attempts.values():
        rec.started_at += delta
        rec.deadline += delta
        rec.ended_at = _moved(rec.ended_at, delta)
        rec.receipt_deadline = _moved(rec.receipt_deadline, delta)
    for ch in d._chans:
        ch.deadline += delta
    for run in d._tried:
        run.wake_at = _moved(run.wake_at, delta)
        run.slow_at = _moved(run.slow_at, delta)
    # The deadline heap moves as a whole: an entry is live only while it equals its node's
    # time, and a uniform shift keeps the heap ordered.
    d._due = [(t + delta, rank, pre, seq, node) for t, rank, pre, seq, node in d._due]
    d._want = _moved(d._want, delta)
    d._timer = _moved(d._timer, delta)
