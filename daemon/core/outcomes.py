"""What moves a provider run on once it has started: answers, receipts, retries, the breaker cut-over.

Module-level functions that take the `Delivery` (daemon/core/engine.py). `handle_outcome` reads
a provider's answer (docs/configuration.md "[failover]"): 2xx delivers or, with confirm =
"receipt", waits for the receipt; a retryable failure retries the provider after a back-off
that fits before the channel deadline (`retry_or_fail`) or fails over; a 429 under an outbound
rate limit counts no breaker failure. `run_delivered` ends a delivered run (with the one-attempt
common case in one go); `late_receipt` and `earlier_receipt` count a receipt that arrives after
failover moved on, or for an attempt of an earlier run (duplicates in a `single` scope);
`cut_run` and `provider_unhealthy` fail over at once from a provider whose breaker opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .commands import (ATTEMPT_ACCEPTED, CHANNEL_FINISHED, DELIVERED, DUPLICATE, FINISHED, LATE_RECEIPT,
                       RETRY_ABANDONED, RETRY_SCHEDULED, AttemptRecord, CancelAttempt, Finish, Outcome, _tnew)
from .resume import locate
from .tree import ATTEMPTING, AWAITING, BACKOFF, DONE, RANK_ATTEMPT, RANK_BACKOFF, _by_pre, _Channel, _Group, _Node, _Resume, _Run
from .walk import cancel_under, complete, finish, stop_run

if TYPE_CHECKING:      # the type only: engine.py imports this module (no import cycle at run time)
    from .engine import Delivery


def handle_outcome(d: Delivery, run: _Run, o: Outcome, now: float) -> None:
    rec = run.attempt
    if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
        assert rec is not None
    rule = d.plan.failover
    if o.network or o.status is None:
        d._end_attempt(rec, "network", None, now, o.detail)
        d._record_health(run, False, now)
        retry_or_fail(d, run, now, None, "network", retryable=rule.network)
        return
    if 200 <= o.status < 300:
        if run.step.confirm == "receipt":
            rec.status_code = o.status
            rec.receipt_deadline = min(now + run.step.receipt_timeout_ms / 1000.0,
                                       d._channel_of(run).deadline)
            run.state = AWAITING
            d._push(rec.receipt_deadline, RANK_ATTEMPT, run)
            d._emit(ATTEMPT_ACCEPTED, now, attempt_id=rec.attempt_id, status_code=o.status,
                    receipt_deadline=rec.receipt_deadline)
            return
        d._end_attempt(rec, "delivered", o.status, now)
        d._record_health(run, True, now)
        run_delivered(d, run, rec, now)
        return
    paced = False
    if o.status == 429 and d.limiter is not None:
        # the vendor's own limit: slow this provider's bucket down (adaptive, limiter.py)
        d.limiter.on_throttled(run.step.provider, now, o.retry_after_s)
        # With an outbound rate_limit the limiter answers a 429 (it lowered the rate above):
        # the provider works, it is only asked too fast, so the 429 is no breaker failure --
        # a burst of them must not open the breaker and push everything to the backup
        # (docs/configuration.md "Rate limits and priorities"). The attempt still fails over.
        paced = d.limiter.rate_limited(run.step.provider)
    if rule.status_retryable(o.status):
        d._end_attempt(rec, "failed", o.status, now, o.detail)
        if not paced:
            d._record_health(run, False, now)
        retry_or_fail(d, run, now, o.retry_after_s, f"status {o.status}")
    else:
        d._end_attempt(rec, "rejected", o.status, now, o.detail)
        run.state = DONE
        d._channel_of(run).rejected = True
        complete(d, run, "failed", now, reason=f"rejected with status {o.status}")


def retry_or_fail(d: Delivery, run: _Run, now: float, retry_after: float | None, reason: str,
                  retryable: bool = True) -> None:
    step = run.step
    ch = d._channel_of(run)
    # the run goes to BACKOFF or, through walk.complete, to DONE (never DONE and back: RUN_TRANSITIONS)
    if not retryable:
        ch.rejected = True
        complete(d, run, "failed", now, reason=f"{reason} (not in failover.on)")
        return
    if run.tries <= step.retries:
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            cap = min(step.backoff_max_ms, step.backoff_base_ms * (2 ** (run.tries - 1)))
            delay = d.rng.uniform(0.0, cap / 1000.0)
        if now + delay < ch.deadline:
            run.state = BACKOFF
            run.wake_at = now + delay
            d._push(run.wake_at, RANK_BACKOFF, run)
            d._emit(RETRY_SCHEDULED, now, channel=ch.step.channel, provider=step.provider,
                    at=run.wake_at, delay_s=delay, reason=reason)
            return
        d._emit(RETRY_ABANDONED, now, channel=ch.step.channel, provider=step.provider,
                reason=f"back-off of {delay:.3f}s does not fit before the channel deadline")
    complete(d, run, "failed", now, reason=reason)


def run_delivered(d: Delivery, run: _Run, rec: AttemptRecord, now: float) -> None:
    run.state = DONE
    if d.delivered_at is None:
        d.delivered_at = now
    if d._wants(DELIVERED):
        d._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider)
    root = d.root
    tried = d._tried
    if len(tried) == 1 and len(d._chans) == 1 and len(d._groups) == 1 and root.method == "single" \
            and root.result is None and d.status == "pending":
        ch = d._nodes[run.parent]
        if ch.parent == 0 and ch.method == "single" and ch.result is None:
            # The common case, in one go: the first attempt of the only channel started, right
            # under a `single` root, delivered. Nothing else ever ran, so nothing is left to cut:
            # exactly what complete -> child_done -> complete(channel) -> complete(root) ->
            # finish (walk.py) do on this path, less their walks.
            run.result = "delivered"
            run.delivered = True
            ch.result = "delivered"
            ch.delivered = True
            d._emit(CHANNEL_FINISHED, now, channel=ch.step.channel, result="delivered")  # type: ignore[union-attr]
            root.result = "delivered"
            root.delivered = True
            d.status = "delivered"
            d.finished_at = now
            if d._wants(FINISHED):
                d._emit(FINISHED, now, status="delivered")
            d._out.append(_tnew(Finish, ("delivered", now, d.delivered_at)))
            return
    complete(d, run, "delivered", now)


def late_receipt(d: Delivery, run: _Run, rec: AttemptRecord, status: str, now: float) -> None:
    d._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
            provider=rec.provider)
    if status != "delivered" or rec.outcome == "delivered":
        return
    rec.outcome = "delivered"
    d._record_health(run, True, now)
    if d.terminal:
        if d.status == "delivered":
            d.duplicates += 1
            d._emit(DUPLICATE, now, attempt_id=rec.attempt_id, channel=rec.channel,
                    provider=rec.provider)
        return
    if d.delivered_at is None:
        d.delivered_at = now
    d._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
            late=True)
    if run.result is None:
        # The provider is still being tried (a retry in flight or backing off) but an earlier
        # try did deliver: stop trying it and let the tree go on as for any delivery.
        stop_run(d, run, now, "delivered by a late receipt")
        complete(d, run, "delivered", now)
        return
    # Walk up: a single scope that already delivered through another child makes this a
    # duplicate; a single scope still running is satisfied now and stops what it runs.
    node: _Node = run
    node.delivered = True
    while node.parent >= 0:
        parent = d._nodes[node.parent]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(parent, (_Group, _Channel))
        if parent.method == "single" and parent.delivered:
            d.duplicates += 1
            d._emit(DUPLICATE, now, attempt_id=rec.attempt_id, channel=rec.channel,
                    provider=rec.provider)
            return
        parent.delivered = True
        if parent.result is None and parent.method == "single":
            cancel_under(d, parent, now, "cancelled", "delivered by a late receipt")
            complete(d, parent, "delivered", now)
            return
        node = parent
    if d.root.result is not None and not d.terminal:
        finish(d, now)


def cut_run(d: Delivery, run: _Run, now: float) -> None:
    """Its provider's breaker is open: stop the run's attempt (or back-off) and fail over."""
    rec = run.attempt
    if run.state == ATTEMPTING and rec is not None:
        d._out.append(CancelAttempt(rec.attempt_id, "breaker opened"))
        d._end_attempt(rec, "cancelled", None, now, "breaker opened")
    else:
        d._emit(RETRY_ABANDONED, now, channel=d._channel_of(run).step.channel,
                provider=run.step.provider, reason="breaker opened")
    run.state = DONE
    run.wake_at = None
    run.slow_at = None
    complete(d, run, "failed", now, reason="breaker opened")


def earlier_receipt(d: Delivery, rec: AttemptRecord, status: str, now: float) -> None:
    """Delivery.on_earlier_receipt between its catch-up and its settle."""
    found = locate(d, rec.channel, rec.provider) if rec.attempt_id not in d.attempts else None
    if status != "delivered" or d.status != "pending" or found is None:
        d._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
                provider=rec.provider, previous_run=True)
        return
    ch, i = found
    if ch.started and ch.children:
        run = ch.children[i - 1]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(run, _Run)
        d.attempts[rec.attempt_id] = rec
        d._runs[rec.attempt_id] = run
        late_receipt(d, run, rec, status, now)
    else:
        d._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
                provider=rec.provider, previous_run=True)
        if d._resume is None:
            d._resume = _Resume()
        d._resume.delivered.add(ch.pre)
        if d.delivered_at is None:
            d.delivered_at = now
        d._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
                late=True)


def provider_unhealthy(d: Delivery, provider: str, now: float) -> None:
    """Delivery.on_provider_unhealthy between its catch-up and its settle: the breaker cut-over."""
    if d.status == "pending" and d.health.blocks(provider, now):
        hit = [r for r in d._tried if r.step.provider == provider and r.step.breaker_failures is not None
               and (r.state == ATTEMPTING or r.state == BACKOFF)]
        if len(hit) > 1:
            hit.sort(key=_by_pre)
        for run in hit:
            # what an earlier one set off (a channel ending, a failover) may have ended it already
            if d.status != "pending" or run.result is not None or \
                    not (run.state == ATTEMPTING or run.state == BACKOFF):
                continue
            cut_run(d, run, now)
