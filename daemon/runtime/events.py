"""Where a message's events go once the engine emits them: the attempt rows and events in the
store, the Prometheus metrics, and the event listeners (MQTT), told only once committed."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Callable

from ..core.engine import Event
from ..metrics import Metrics
from ..store import EventRow, Store
from .base import _Live, _attempt_values

log = logging.getLogger("routingd.runtime")

_METRIC_EVENTS = frozenset({"attempt_ended", "failover", "breaker_opened", "breaker_closed"})


class EventLog:
    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.listeners: list[Callable[[str, Event], None]] = []
        self._unheard: list[tuple[str, Event]] = []      # events whose rows are not committed yet

    def record(self, live: _Live, event: Event) -> None:
        """One event outside a command list (resume, late receipts): kept, stored, noted."""
        live.events.append(event)
        self.store.put_events(live.row.id, [event])
        self.note(live, event)

    def note(self, live: _Live, event: Event) -> None:
        # The engine never changes an event once emitted, so the Event itself is kept for the
        # status endpoint and handed to the store (encoded by the writer thread); here: the
        # attempt rows, the metrics and the listeners.
        mid = live.row.id
        type_ = event.type
        data = event.data
        aid = data.get("attempt_id")
        if aid is not None:
            if type_ == "attempt_ended" and data.get("detail"):
                live.details[aid] = str(data["detail"])
            rec = live.delivery.attempts.get(aid)
            if rec is not None:
                # The row is written when it changes: at the start, at the end, and when a 2xx
                # awaits its receipt or a late receipt turns it delivered (not for the other events
                # that name the attempt).
                detail = live.details.get(aid)
                state = (rec.ended_at, rec.outcome, rec.status_code, detail)
                if live.written.get(aid) != state:
                    live.written[aid] = state
                    self.store.put_attempt_values(_attempt_values(aid, mid, rec, detail))
        if type_ in _METRIC_EVENTS:
            m = self.metrics
            if type_ == "attempt_ended":
                m.attempt_ended(data.get("channel", ""), data.get("provider", ""), data.get("outcome", ""))
            elif type_ == "failover":
                m.failover(data.get("kind", ""))
            elif type_ == "breaker_opened":
                m.breaker_open.labels(provider=data.get("provider", "")).set(1)
            elif type_ == "breaker_closed":
                m.breaker_open.labels(provider=data.get("provider", "")).set(0)
        self.notify(mid, event)

    def record_offline(self, message_id: str, event: Event) -> None:
        """One event of a message not in memory (finished at resume, a late receipt): stored, noted."""
        self.store.add_event(EventRow(message_id, event.type, event.at, dict(event.data)))
        self.notify(message_id, event)

    def notify(self, message_id: str, event: Event) -> None:
        """Listeners (the MQTT events) hear an event once its row is committed, never before: a
        subscriber must not see a status that a crash rolls back. This turn's events wait in
        _unheard; at the end of the turn (after the rows of the command list that emitted them
        are queued) one committed() mark is queued behind them, and its commit tells them all."""
        if not self.listeners:
            return
        unheard = self._unheard
        if not unheard:
            asyncio.get_running_loop().call_soon(self._seal_unheard)
        unheard.append((message_id, event))

    def _seal_unheard(self) -> None:
        unheard, self._unheard = self._unheard, []
        if not unheard or not self.store.is_open:
            return                      # the store is closed: not stored, so never told
        self.store.committed().add_done_callback(functools.partial(self._tell, unheard))

    def _tell(self, unheard: list[tuple[str, Event]], committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            return
        for message_id, event in unheard:
            for cb in self.listeners:
                try:
                    cb(message_id, event)
                except Exception:  # noqa: BLE001 - a listener must never break routing
                    log.exception("event listener failed on %s %s", message_id, event.type)
