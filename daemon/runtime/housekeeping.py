"""The Router's background upkeep: following a step of the wall clock, and the retention purge."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("routingd.runtime")

_PURGE_EVERY_S = 600.0
_CLOCK_EVERY_S = 1.0           # how often the wall clock is checked for a step (also at each submit)


class Housekeeping:
    def __init__(self, router: Router) -> None:
        self._r = router
        # The sum of the wall-clock steps followed (see follow_clock), and the time from which the
        # idempotency keys of the current time axis were written.
        self.shifted = 0.0
        self.axis_since = 0.0

    def follow_clock(self) -> None:
        """If the wall clock stepped (Clock.step), move every time this process holds by the
        step: the in-flight messages (engine Delivery.rebase), their rows and attempt rows in the
        store, the idempotency keys written on the old time axis, the breakers' cooldowns and the
        wake-ups. Times stored from now on follow the wall clock; no deadline moves relative to
        the monotonic clock, so none fires earlier or later (docs/reliability.md "Clean restarts")."""
        r = self._r
        step_of = getattr(r.clock, "step", None)
        delta = step_of() if step_of is not None else 0.0
        if not delta:
            return
        log.warning("the wall clock stepped by %+.3fs; %d in-flight message(s) follow it", delta, len(r._live))
        self.shifted += delta
        for live in r._live.values():
            live.delivery.rebase(delta)
            row = live.row
            row.accepted_at += delta
            row.message_deadline += delta
            for a in live.prior.values():
                a.started_at += delta
                a.deadline += delta
                if a.ended_at is not None:
                    a.ended_at += delta
        r.health.rebase(delta)
        r.fleet.limiter.rebase(delta)
        r._wakeups.rebase(delta)
        if r.store.is_open:
            r.store.shift_times(delta, self.axis_since)
        self.axis_since = r.clock.now()

    async def clock_loop(self) -> None:
        while True:
            await asyncio.sleep(_CLOCK_EVERY_S)
            try:
                self.follow_clock()
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("following a step of the wall clock failed")

    async def purge_once(self, retention_s: float, idempotency_ttl_s: float) -> int:
        """One round of the retention purge (Store.purge); the purged messages are also dropped
        from memory before their rows are deleted, so a late receipt for one finds nothing to
        re-insert rows for (it is counted as unmatched: Router.receipt())."""
        r = self._r
        return await r.store.purge(r.clock.now(), retention_s, idempotency_ttl_s, r._policy.version,
                                   forget=self._forget)

    def _forget(self, message_ids: list[str]) -> None:
        recent = self._r._recent
        for mid in message_ids:
            recent.pop(mid, None)

    async def purge_loop(self) -> None:
        while True:
            try:
                r = self._r
                d = r.limits if r.limits is not None else r._policy.model.daemon
                while True:
                    n = await r.purge_once(d.retention / 1000.0, d.idempotency_ttl / 1000.0)
                    if n:
                        log.info("purged %d finished message(s) older than the retention", n)
                    if n < 5000:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.error("purging old messages failed: %s", e)
            await asyncio.sleep(_PURGE_EVERY_S)
