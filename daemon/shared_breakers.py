"""Breakers shared by the routingd processes of one PostgreSQL database (docs/scaling.md).

When a breaker opens or closes in one process, the others learn it within a notice's round trip
(milliseconds) instead of each finding it out with its own failures:

  * telling: a Router event listener; a `breaker_opened` / `breaker_closed` event of this
    process (its own transition, emitted by the engine once its row is committed) is published
    on the NoticeBus (daemon/store/pg_notify.py: PostgreSQL LISTEN/NOTIFY);
  * hearing: a notice from another process goes to Router.breaker_heard, which hands it to the
    core's rule (daemon/core/fleet.py Fleet.breaker_heard): open here too for this process's own
    cooldown (and fail the attempts in flight there over), or close. A transition heard emits no
    event, so it is never told on: no echo between processes.

Counted in routingd_breaker_notices_heard_total{result}: applied (a breaker changed here),
unchanged (it already was so, or its breaker is off here), unknown_provider (not in this
process's policy: another policy version; ignored), malformed (not a notice; ignored).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .store.pg_notify import Notice, NoticeBus

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Router

log = logging.getLogger("routingd")


class SharedBreakers:
    """`router.add_event_listener(shared)`, `await shared.start()`, `await shared.close()`."""

    def __init__(self, router: Router, url: str, metrics: Metrics, connect_timeout_s: int = 5) -> None:
        self.router = router
        self.metrics = metrics
        self.bus = NoticeBus(url, self.heard, self.malformed, connect_timeout_s=connect_timeout_s)

    async def start(self) -> None:
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.close()

    def __call__(self, message_id: str, event: Any) -> None:
        """Router event listener: tell the others of this process's breaker transitions."""
        type_ = event.type
        if type_ == "breaker_opened" or type_ == "breaker_closed":
            provider = event.data.get("provider")
            if isinstance(provider, str) and provider:
                self.bus.publish(provider, type_ == "breaker_opened", self.router.policy.version)

    def heard(self, notice: Notice) -> None:
        fleet = self.router.fleet
        ignored = fleet.heard_ignored
        result = self.router.breaker_heard(notice.provider, notice.opened)
        if fleet.heard_ignored != ignored:
            self._count("unknown_provider")
            log.debug("breaker notice for %r ignored: no such provider in policy %s (the sender runs %s)",
                      notice.provider, self.router.policy.version, notice.policy)
            return
        if result is None:
            self._count("unchanged")
            return
        self._count("applied")
        if result == "opened":
            log.warning("provider %s: breaker opened in another routingd process; skipped here too for its "
                        "cooldown", notice.provider)
        else:
            log.info("provider %s: breaker closed in another routingd process (its probe succeeded); closed "
                     "here too", notice.provider)

    def malformed(self, payload: str) -> None:
        self._count("malformed")
        log.debug("a notification on the breaker channel is not a notice: %r", payload[:200])

    def _count(self, result: str) -> None:
        self.metrics.breaker_notices.labels(result=result).inc()
