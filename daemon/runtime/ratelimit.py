"""The driver's side of the outbound rate limits (the rules are the Fleet's Limiter,
daemon/core/limiter.py): the limits configured from the policy, slots given back, and queued
runs handed their turn, with one loop timer for the next turn."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..core.engine import Command, StartAttempt
from ..core.policy import Policy
from .base import _Live

if TYPE_CHECKING:
    from .router import Router


class RateLimits:
    def __init__(self, router: Router) -> None:
        self._r = router
        # the one wake-up for the rate limiter's next turn (daemon/core/limiter.py)
        self._limit_handle: asyncio.TimerHandle | None = None
        self._limit_at: float | None = None

    def configure(self, policy: Policy) -> None:
        """The providers' outbound limits (rate_limit, burst, max_inflight) into the fleet's limiter;
        on a reload an unchanged limit keeps its bucket and queue (daemon/core/limiter.py)."""
        limits = {}
        for name, p in policy.providers.items():
            lim = p.outbound_limit()
            if lim is not None:
                limits[name] = lim
        self._r.fleet.limiter.configure(limits, self._r.clock.now())

    def set_share(self, share: float) -> None:
        """This process's share of every rate limit (1 / the live processes on the database:
        daemon/cluster.py): the limiter's buckets and the departure gates (daemon/adapters.py)
        keep that part of each configured rate and burst from now on."""
        r = self._r
        now = r.clock.now()
        r.fleet.limiter.set_share(share, now)
        r._ctx.share = share
        loop_now = r._loop.time() if r._loop is not None else None
        for gate in r._ctx.gates.values():
            gate.pacer.set_share(share, loop_now if loop_now is not None else now)
        if not r._halted:
            self.dispatch(now)          # a higher share may hand turns out sooner: re-arm the wake-up

    def unstart(self, first: list[Command], now: float) -> None:
        """start()'s commands were dropped (a replay, a failed insert): give back the rate-limit
        slots its attempts took (its queued runs are dropped by the limiter itself)."""
        lim = self._r.fleet.limiter
        for cmd in first:
            if isinstance(cmd, StartAttempt) and lim.limited(cmd.provider):
                lim.refund(cmd.provider, now)

    def call_ended(self, provider: str, _done: object) -> None:
        """A call on a rate-limited provider ended (answered, failed or cancelled): its place in
        flight is free, and whoever queued for it may go (daemon/core/limiter.py)."""
        self._r.fleet.limiter.release(provider)
        if not self._r._halted:
            self.dispatch(self._r.clock.now())

    def dispatch(self, now: float) -> None:
        """Hand queued runs whose turn has come their slot (the Fleet's, daemon/core/fleet.py),
        and arm the one limiter wake-up for the next turn."""
        r = self._r
        fleet = r.fleet

        def execute(live: _Live, commands: list[Command]) -> None:
            if not r._halted:
                r._apply(live, commands, now)
        fleet.dispatch(now, execute)
        nxt = fleet.limiter.next_at(now)
        if self._limit_handle is not None and (nxt is None or nxt != self._limit_at):
            self._limit_handle.cancel()
            self._limit_handle = self._limit_at = None
        if nxt is not None and self._limit_handle is None and r._loop is not None and not r._halted:
            self._limit_at = nxt
            self._limit_handle = r._loop.call_later(max(0.0, nxt - now), self._on_limiter)

    def halt(self) -> None:
        """The Router stopped: the next turn's wake-up is cancelled."""
        if self._limit_handle is not None:
            self._limit_handle.cancel()
            self._limit_handle = self._limit_at = None

    def _on_limiter(self) -> None:
        self._limit_handle = self._limit_at = None
        if not self._r._halted:
            self.dispatch(self._r.clock.now())
