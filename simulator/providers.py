"""Simulated providers: the shared behaviour model (routingd.daemon.core.behaviour) plus an outage timeline.

The answer to each request is `routingd.daemon.core.behaviour.draw`'s -- the model the daemon's `sandbox`
provider uses (through draw_answer, the same function wrapped in an Answer). Which fail mode
and behaviour apply at a given simulated time is the core's mode_at over the scenario's outage
windows, the rule the sandbox's own `outages` follow on the wall clock.
"""

from __future__ import annotations

import random

from ..daemon.core.behaviour import Answer, BehaviourSpec, Draw, OutageWindow, RateWindow, draw, mode_at


class SimProvider:
    """One provider of one run: healthy behaviour, baseline fail mode, outage windows, rate limit."""

    def __init__(self, name: str, spec: BehaviourSpec, rng: random.Random, fail: str = "none",
                 outages: tuple[OutageWindow, ...] = ()) -> None:
        self.name = name
        self.spec = spec
        self.fail = fail
        self.rng = rng
        self.outages = tuple(sorted(outages, key=lambda o: o.start_s))
        self.window = RateWindow(spec.rate_limit)

    def mode_at(self, now: float) -> tuple[str, BehaviourSpec]:
        """The fail mode and behaviour in force at `now` (the latest-starting active outage wins)."""
        return mode_at(self.fail, self.spec, self.outages, now)

    def answer(self, now: float, confirm_receipt: bool) -> Answer:
        return Answer(*self.draw(now, confirm_receipt))

    def draw(self, now: float, confirm_receipt: bool) -> Draw:
        """The answer to a request sent at `now`, as a tuple of Answer's fields."""
        if self.outages:
            fail, spec = self.mode_at(now)
        else:
            fail, spec = self.fail, self.spec
        return draw(spec, fail, self.rng, now, self.window, confirm_receipt)
