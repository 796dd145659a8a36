"""Per-provider circuit breakers: a pure object shared by every message of one process/run.

closed --(N consecutive retryable failures)--> open --(cooldown)--> half-open: one probe is let
through (and the breaker re-arms for another cooldown in case the probe vanishes); a success
closes it, a failure opens it again. Time is passed in.

`heard`: another process's breaker on the same provider opened or closed (routingd processes
sharing one PostgreSQL database tell each other: daemon/shared_breakers.py): the same transition
here, with this process's own cooldown; a transition heard is never told on (no echo).

`drained`: providers taken out of rotation by hand (POST /v1/providers/NAME/drain): allow()
refuses them like an open breaker, whatever their breaker (even one turned off), until resumed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float | None = None     # None: closed
    half_open: bool = False


class HealthTracker:
    def __init__(self) -> None:
        self._b: dict[str, _Breaker] = {}
        self.drained: set[str] = set()
        # When a list (the Fleet sets it, daemon/core/fleet.py): each provider whose breaker
        # opens is appended, for the Fleet's cut-over worklist. None: nobody cuts, keep nothing.
        self.opened: list[str] | None = None

    def allow(self, provider: str, threshold: int | None, cooldown_s: float, now: float) -> bool:
        """May an attempt on `provider` start now? Consumes the half-open probe if it is one."""
        if self.drained and provider in self.drained:
            return False
        if threshold is None:
            return True
        b = self._b.get(provider)
        if b is None or b.open_until is None:      # closed (or never seen: a new one is closed)
            return True
        if now >= b.open_until:
            b.half_open = True
            b.open_until = now + cooldown_s    # one probe per cooldown
            return True
        return False

    def record(self, provider: str, ok: bool, threshold: int | None, cooldown_s: float, now: float) -> str | None:
        """Record a success or a retryable failure; return "opened"/"closed" on a transition."""
        if threshold is None:
            return None
        b = self._b.get(provider)
        if b is None:
            b = self._b[provider] = _Breaker()
        if ok:
            if b.open_until is None:                # the common case: closed, stays closed
                b.failures = 0
                return None
            was_open = b.open_until is not None
            b.failures, b.open_until, b.half_open = 0, None, False
            return "closed" if was_open else None
        b.failures += 1
        if b.open_until is not None:
            if b.half_open:
                b.half_open = False
                b.open_until = now + cooldown_s
            return None
        if b.failures >= threshold:
            b.open_until = now + cooldown_s
            if self.opened is not None:
                self.opened.append(provider)
            return "opened"
        return None

    def heard(self, provider: str, opened: bool, threshold: int | None, cooldown_s: float, now: float) -> str | None:
        """Another process's breaker on `provider` opened (opened=True) or closed, as it told us at
        `now`; return "opened"/"closed" when that changed this breaker, else None.

        Opened: a closed breaker here opens for this process's own `cooldown_s` (the clocks of two
        processes are not compared) and joins the `opened` worklist, as a local opening does, so
        the attempts in flight on the provider fail over too; one already open (or half-open, its
        probe in flight) keeps its own cooldown and probe. Closed: the other process's probe
        succeeded, so the provider works again: an open breaker here closes, and a closed one
        forgets its failures. `threshold` None (the breaker is off here): nothing changes."""
        if threshold is None:
            return None
        b = self._b.get(provider)
        if b is None:
            b = self._b[provider] = _Breaker()
        if opened:
            if b.open_until is not None:
                return None
            b.open_until = now + cooldown_s
            b.half_open = False
            if self.opened is not None:
                self.opened.append(provider)
            return "opened"
        was_open = b.open_until is not None
        b.failures, b.open_until, b.half_open = 0, None, False
        return "closed" if was_open else None

    def blocks(self, provider: str, now: float) -> bool:
        """Would allow() refuse an attempt on `provider` now? (open, and no probe due; consumes nothing)"""
        b = self._b.get(provider)
        return b is not None and b.open_until is not None and now < b.open_until

    def rebase(self, delta: float) -> None:
        """The driver's time axis moved by `delta` seconds (see Delivery.rebase): so do the cooldowns."""
        for b in self._b.values():
            if b.open_until is not None:
                b.open_until += delta

    def is_open(self, provider: str) -> bool:
        b = self._b.get(provider)
        return b is not None and b.open_until is not None

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {p: {"failures": b.failures, "open": b.open_until is not None, "open_until": b.open_until,
                    "half_open": b.half_open}
                for p, b in self._b.items()}
