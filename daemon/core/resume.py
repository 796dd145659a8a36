"""Resuming a message after a restart (docs/reliability.md "Restarts"): what its earlier runs did.

Module-level functions that take the `Delivery` (daemon/core/engine.py). `adopt` reads the
attempt records of the earlier runs before start() into a `_Resume` (daemon/core/tree.py): the
channels already delivered, the attempts still awaiting their receipt, where each `single` scope
starts; `adopt_run` starts a provider run on such an awaited attempt when its channel starts
(walk.py); `locate` finds the channel and provider run an earlier record belongs to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .commands import ATTEMPT_RESUMED, AttemptRecord
from .tree import AWAITING, RANK_ATTEMPT, _Channel, _Node, _Resume, _Run

if TYPE_CHECKING:      # the type only: engine.py imports this module (no import cycle at run time)
    from .engine import Delivery


def adopt(d: Delivery, records: "list[AttemptRecord]") -> None:
    """Call before start() on a delivery resumed after a restart: `records` are attempts of
    its earlier runs (other attempt ids than this run's). Two kinds count, the others are
    history only (their channel runs again: at-least-once):

      * outcome "delivered": the channel it ran in (the first channel of that name in plan
        order that has its provider) counts as delivered and is not run again, and the
        message's delivered_at is the earliest such attempt's ended_at;
      * not ended, with a 2xx status_code (answered, awaiting its receipt): when its channel
        starts, that provider's run waits for the receipt of this very attempt, until
        min(receipt_deadline, channel deadline) (receipt_deadline None: the channel
        deadline; one that passed while routingd was down: the start's `now`), instead of
        calling the provider again; on_receipt() takes its receipt.

    `single` scopes on the way to such a channel (and a `single` channel to such a provider)
    start at it: what came before it in plan order was tried in an earlier run."""
    res = _Resume()
    for rec in records:
        found = locate(d, rec.channel, rec.provider)
        if found is None:
            continue                    # the plan no longer has it: history only
        ch, i = found
        if rec.outcome == "delivered":
            res.delivered.add(ch.pre)
            at = rec.ended_at if rec.ended_at is not None else rec.started_at
            if d.delivered_at is None or at < d.delivered_at:
                d.delivered_at = at
        elif rec.outcome is None and rec.ended_at is None and rec.status_code is not None \
                and 200 <= rec.status_code < 300:
            if ch.pre + i in res.awaiting:
                continue                # one awaited attempt per run (the first found)
            res.awaiting[ch.pre + i] = rec
            if ch.method == "single":
                res.first[ch.pre] = min(res.first.get(ch.pre, i - 1), i - 1)
        else:
            continue
        node: _Node = ch
        while node.parent >= 0:
            parent = d._nodes[node.parent]
            if parent.method == "single":
                k = parent.children.index(node)
                res.first[parent.pre] = min(res.first.get(parent.pre, k), k)
            node = parent
    d._resume = res


def locate(d: Delivery, channel: str, provider: str) -> "tuple[_Channel, int] | None":
    """The first channel named `channel` in plan order with `provider`, and the provider's
    1-based position in it (its run's pre is the channel's pre + that)."""
    for n in d._nodes.values():
        if isinstance(n, _Channel) and n.step.channel == channel:
            for i, p in enumerate(n.step.providers, 1):
                if p.provider == provider:
                    return n, i
    return None


def adopt_run(d: Delivery, run: _Run, rec: AttemptRecord, now: float) -> None:
    """Start `run` on an earlier run's attempt that awaits its receipt (see adopt())."""
    ch = d._channel_of(run)
    run.tries = rec.try_no
    d._tried.append(run)
    rt = rec.receipt_deadline
    # A receipt deadline that passed while routingd was down is due now, not back then: what
    # follows it (a retry, a failover) starts at `now` with its whole timeout. Fired at the old
    # deadline, the next attempts would start in the past with deadlines already gone, and
    # time out before they were ever made (docs/reliability.md "Restarts").
    rec.receipt_deadline = max(now, ch.deadline if rt is None else min(rt, ch.deadline))
    d.attempts[rec.attempt_id] = rec
    d._runs[rec.attempt_id] = run
    run.attempt = rec
    run.state = AWAITING
    run.slow_counted = False
    d._push(rec.receipt_deadline, RANK_ATTEMPT, run)
    d._emit(ATTEMPT_RESUMED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
            receipt_deadline=rec.receipt_deadline)
