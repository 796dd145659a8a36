"""Resuming at start (Router.start): each message the store holds as pending is prepared for its
next run under the policy version it was accepted under, or finished offline when it cannot run
again (its deadline passed while routingd was down, its request no longer validates)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..content import render_message
from ..core.engine import AttemptRecord, Delivery, Event
from ..core.plan import PlanError, resolve_plan
from ..core.request import SendRequest
from ..store import AttemptRow, MessageRow, StoredMessage
from .base import _Live

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("routingd.runtime")


class Resume:
    def __init__(self, router: Router) -> None:
        self._r = router

    async def resume(self, sm: StoredMessage) -> _Live | None:
        """Prepare a stored message for its next run (None: it finished offline); Router._begin()
        runs it.

        Attempts of earlier runs that were running are ended `cancelled`; those answered 2xx and
        awaiting their receipt stay open and are handed to the engine (Delivery.adopt) with
        their receipt deadline, as are delivered ones: a channel already delivered is not run
        again, and a receipt for an awaited attempt counts (docs/reliability.md "Restarts")."""
        r = self._r
        row = sm.message
        now = r.clock.now()
        snap, problem = await r._snapshots.snapshot_for(row.policy_version, r._policy)
        live_prior = {a.attempt_id: a for a in sm.attempts}
        r.store.end_open_attempts(row.id, now, "interrupted: routingd stopped during the attempt")
        for a in live_prior.values():
            if a.ended_at is None and not _awaiting(a):
                a.ended_at, a.outcome, a.detail = now, "cancelled", "interrupted: routingd stopped during the attempt"
        row.run += 1
        r.store.set_run(row.id, row.run)
        delivered = [a.ended_at if a.ended_at is not None else a.started_at
                     for a in live_prior.values() if a.outcome == "delivered"]
        if now >= row.message_deadline:
            # The engine's start() past the deadline would say "undeliverable" (engine.py
            # Delivery.start); a message whose deadline passed while routingd was down expired --
            # unless a channel of it delivered before (a fan-out route): then it was delivered.
            r.store.end_open_attempts(row.id, now, "message deadline passed while routingd was not running",
                                      keep_awaiting=False)
            status = "delivered" if delivered else "expired"
            self.finish_offline(row, status, now, [
                Event("message_deadline", row.message_deadline, {"while": "routingd was not running"}),
                Event("finished", now, {"status": status})], min(delivered) if delivered else None)
            return None
        try:
            req = SendRequest.model_validate_json(row.request).message
            plan = resolve_plan(snap.policy, request=req)
            rendered = render_message(snap.policy, plan, req)    # deterministic: as at accept
        except (ValueError, PlanError) as e:
            # A stored request this version no longer accepts (validation tightened by an
            # upgrade), or a plan the fallback policy cannot build: that message ends here,
            # the others resume (pydantic's ValidationError is a ValueError).
            reason = f"the stored request no longer validates: {_one_line(e)}" if isinstance(e, ValueError) \
                and not isinstance(e, PlanError) else f"no plan for the stored request: {_one_line(e)}"
            log.error("message %s cannot be resumed, finished undeliverable: %s", row.id, reason)
            r.metrics.resume_failed.inc()
            r.store.end_open_attempts(row.id, now, "cannot be resumed", keep_awaiting=False)
            self.finish_offline(row, "undeliverable", now, [
                Event("resume_failed", now, {"reason": reason}), Event("finished", now, {"status": "undeliverable"})])
            return None
        delivery = Delivery(row.id, plan, req.to, row.accepted_at, r._rng, r.health, run=row.run,
                            limiter=r.fleet.limiter, priority=r._accept._priority(snap.policy, plan, req, check=False))
        delivery.message_deadline = row.message_deadline      # the original absolute deadline, always
        accepted_until = {e.data.get("attempt_id"): e.data.get("receipt_deadline")
                          for e in sm.events if e.type in ("attempt_accepted", "attempt_resumed")}
        known = []
        for a in live_prior.values():
            if a.outcome == "delivered" or _awaiting(a):
                rd = accepted_until.get(a.attempt_id)
                known.append(AttemptRecord(a.attempt_id, a.channel, a.provider, a.try_no, a.started_at, a.deadline,
                                           a.ended_at, a.outcome, a.status_code,
                                           float(rd) if isinstance(rd, (int, float)) else None))
        if known:
            delivery.adopt(known)
        live = _Live(row, req, delivery, snap, live_prior, list(sm.events), rendered)
        for a in live_prior.values():
            if _awaiting(a):
                live.written[a.attempt_id] = (a.ended_at, a.outcome, a.status_code, a.detail)
                if a.detail:
                    live.details[a.attempt_id] = a.detail
        if problem:
            r._events.record(live, Event("policy_unavailable", now,
                                         {"reason": problem, "using_version": snap.policy.version}))
        return live

    def finish_offline(self, row: MessageRow, status: str, now: float, events: list[Event],
                       delivered_at: float | None = None) -> None:
        """Finish a stored message without routing it (resume found it past its end)."""
        r = self._r
        for ev in events:
            r._events.record_offline(row.id, ev)
        r.store.finish(row.id, status, now, delivered_at)
        r.metrics.message_finished(status)


def _awaiting(a: AttemptRow) -> bool:
    """An attempt answered 2xx that awaits its receipt: not ended, with a 2xx status code."""
    return a.ended_at is None and a.status_code is not None and 200 <= a.status_code < 300


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]
