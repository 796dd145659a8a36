"""Delivery receipts and vendor events (Router.receipt, Router.vendor_event): a vendor's word on
an attempt, found by attempt id or by the vendor's own id for it, applied to the engine or
recorded on the message, and answered once committed."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

from ..core.engine import AttemptRecord, Event
from ..store import EventRow
from .base import Overloaded, _Live

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("routingd.runtime")

_VENDOR_IDS = 100_000         # vendor ids of recent attempts kept in memory (find_attempt)


class Receipts:
    def __init__(self, router: Router) -> None:
        self._r = router
        # (provider, vendor id) <-> attempt id of recent attempts (vendor_id, find_attempt)
        self._by_vendor: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._vendor_of: dict[str, tuple[str, str]] = {}

    def _check_open(self) -> None:
        """A receipt or vendor event is taken only while the router runs: Overloaded (503, the
        vendor retries) once stop() halted it, and before start() has resumed the pending
        messages, when one would find no attempt awaiting it and only be recorded as late,
        though answered 2xx (docs/reliability.md)."""
        r = self._r
        if r._halted:
            raise Overloaded(1.0, "routingd is shutting down")
        if not r._started:
            raise Overloaded(1.0, "routingd is starting (resuming its pending messages)")

    async def receipt(self, provider: str, attempt_id: str, status: str) -> bool:
        """Apply a delivery receipt; True once what it changed is committed (docs/api.md)."""
        if status not in ("delivered", "failed"):
            raise ValueError(f"receipt status must be 'delivered' or 'failed', got {status!r}")
        self._check_open()
        r = self._r
        mid = attempt_id.rsplit(".", 2)[0] if attempt_id.count(".") >= 2 else ""
        live = r._live.get(mid) or r._recent.get(mid)
        now = r.clock.now()
        if live is not None:
            rec = live.delivery.attempts.get(attempt_id)
            prior = live.prior.get(attempt_id) if rec is None else None
            known = rec if rec is not None else prior
            if known is None or known.provider != provider:
                r.metrics.receipts_unmatched.inc()
                return False
            if _repeated(known.outcome, status, attempt_id, live.events):
                r.metrics.receipts_repeated.inc()
            elif rec is not None:
                r._apply(live, live.delivery.on_receipt(attempt_id, status, now), now)
            else:
                assert prior is not None
                # An attempt of an earlier run that this run did not adopt (the restart cut it
                # mid-call, or it had ended): the engine records it, and a `delivered` one counts.
                earlier = AttemptRecord(prior.attempt_id, prior.channel, prior.provider, prior.try_no,
                                        prior.started_at, prior.deadline, prior.ended_at, prior.outcome,
                                        prior.status_code)
                if prior.detail:
                    live.details.setdefault(attempt_id, prior.detail)
                r._apply(live, live.delivery.on_earlier_receipt(earlier, status, now), now)
        else:
            if r._cluster is not None and await r._cluster.hand_off_receipt(provider, attempt_id, status):
                return True         # stored for the process that routes the message (daemon/cluster.py)
            row = r.store.get_attempt(attempt_id)
            if row is None:
                r.metrics.receipts_unmatched.inc()
                # a message the retention purge deleted (its id says when it was accepted): the
                # vendor is told it arrived, so that it stops resending; nothing is stored
                return self._purged(mid, now)
            if row.provider != provider:
                r.metrics.receipts_unmatched.inc()
                return False
            sm = r.store.get_message(row.message_id)
            if sm is None:
                r.metrics.receipts_unmatched.inc()
                return True
            if _repeated(row.outcome, status, attempt_id, sm.events):
                r.metrics.receipts_repeated.inc()
            else:
                event = Event("late_receipt", now, {"attempt_id": attempt_id, "status": status,
                                                    "channel": row.channel, "provider": provider})
                r.store.add_event_if_message(EventRow(row.message_id, event.type, event.at, dict(event.data)))
                r._events.notify(row.message_id, event)
        # Like a send's 202: the answer waits for the commit of what the receipt changed (and of
        # everything queued before it), so a vendor told "received" never has to resend it.
        try:
            await r.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged and counted it; the vendor retries
            log.error("a receipt for %s could not be stored: %s", attempt_id, e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None
        return True

    def vendor_id(self, provider: str, attempt_id: str, vendor_id: str) -> None:
        """Remember the vendor's id for an attempt's message: stored on the attempt's row (its
        receipts find it there: find_attempt) and kept in memory for the recent ones, since a
        vendor may call back before that row update is committed."""
        store = self._r.store
        if not store.is_open:
            return
        store.set_provider_message_id(attempt_id, vendor_id)
        key = (provider, vendor_id)
        self._by_vendor[key] = attempt_id
        self._vendor_of[attempt_id] = key
        while len(self._by_vendor) > _VENDOR_IDS:
            _, old = self._by_vendor.popitem(last=False)
            self._vendor_of.pop(old, None)

    def vendor_id_of(self, live: _Live, attempt_id: str) -> str | None:
        """The vendor's id for an attempt of `live` (status()): this run's, else an earlier run's."""
        vid = self._vendor_of.get(attempt_id, (None, None))[1]
        if vid:
            return vid
        prior = live.prior.get(attempt_id)
        return None if prior is None else prior.provider_message_id

    def find_attempt(self, provider: str, vendor_id: str) -> str | None:
        """The attempt of `provider` whose message the vendor calls `vendor_id` (docs/api.md
        "Receipts"), or None."""
        aid = self._by_vendor.get((provider, vendor_id))
        if aid is not None:
            return aid
        row = self._r.store.attempt_by_vendor_id(provider, vendor_id)
        return None if row is None else row.attempt_id

    def vendor_event(self, provider: str, attempt_id: str, state: str, detail: dict[str, Any]) -> bool:
        """Record a vendor's state for an attempt as a `vendor_status` event on its message
        (every state a vendor reports, final or not: only final ones go on to receipt()). The
        same state with the same detail again (a vendor's retry) is not recorded twice. False
        when no such attempt of `provider` is known. The caller awaits settle() before it
        answers the vendor."""
        self._check_open()
        r = self._r
        mid = attempt_id.rsplit(".", 2)[0] if attempt_id.count(".") >= 2 else ""
        data = {**{k: v for k, v in detail.items() if k not in ("type", "at")},
                "attempt_id": attempt_id, "provider": provider, "vendor_status": state}
        live = r._live.get(mid) or r._recent.get(mid)
        if live is not None:
            known = live.delivery.attempts.get(attempt_id) or live.prior.get(attempt_id)
            if known is None or known.provider != provider:
                return False
            if not any(e.type == "vendor_status" and e.data == data for e in live.events):
                r._events.record(live, Event("vendor_status", r.clock.now(), data))
            return True
        row = r.store.get_attempt(attempt_id)
        if row is None or row.provider != provider:
            return False
        sm = r.store.get_message(row.message_id)
        if sm is None:
            return False
        if not any(e.type == "vendor_status" and e.data == data for e in sm.events):
            event = Event("vendor_status", r.clock.now(), data)
            r.store.add_event_if_message(EventRow(row.message_id, event.type, event.at, dict(event.data)))
            r._events.notify(row.message_id, event)
        return True

    async def settle(self) -> None:
        """Wait for the commit of everything queued so far (vendor_event's rows), as receipt()
        does: a vendor is told "received" only once what it sent is stored."""
        try:
            await self._r.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged and counted it; the vendor retries
            log.error("a vendor receipt could not be stored: %s", e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None

    def _purged(self, message_id: str, now: float) -> bool:
        """Whether a message with this id, if it existed, would have been purged by now: accepted
        (the time in its id) longer ago than the retention."""
        try:
            accepted_s = int(message_id[:11], 16) / 1000.0
        except ValueError:
            return False
        r = self._r
        d = r.limits if r.limits is not None else r._policy.model.daemon
        return len(message_id) == 27 and accepted_s < now - d.retention / 1000.0


def _repeated(outcome: str | None, status: str, attempt_id: str, events: Sequence[EventRow | Event]) -> bool:
    """Whether a receipt repeats one already recorded: a `delivered` one for an attempt that is
    delivered, or one whose late_receipt event (same attempt, same status) is already stored.
    Such a replay changes nothing and is not recorded again (a vendor's retries, or a replay,
    must not grow a message's events without bound; docs/security.md)."""
    if outcome == "delivered" and status == "delivered":
        return True
    for e in events:
        if e.type == "late_receipt" and e.data.get("attempt_id") == attempt_id and e.data.get("status") == status:
            return True
    return False
