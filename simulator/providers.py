"""Simulated providers: the shared behaviour model (daemon.core.behaviour) plus an outage timeline.

The answer to each request is `daemon.core.behaviour.draw_answer`'s, the model the daemon's
`sandbox` provider uses; the only simulator-specific part is *which* fail mode and behaviour
apply at a given simulated time (the outage windows of the scenario).

Cost: the simulator draws one answer per attempt, so the healthy case (fail mode "none" with the
provider's own behaviour, i.e. outside every outage) is precomputed per provider: the log-normal
sigma once instead of per draw, and a plain tuple instead of an `Answer`. It is the very same
arithmetic in the same order on the same random stream as draw_answer, so it gives the same
floats and consumes the same draws (tests/test_simulator_model.py compares it with draw_answer
draw by draw); every other mode calls draw_answer itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from daemon.core.behaviour import _Z99, Answer, BehaviourSpec, LatencyDist, RateWindow, draw_answer

# (kind, delay_s, status, retry_after_s, receipt_delay_s): the fields of an Answer, in its order
Draw = tuple[str, float, "int | None", "float | None", "float | None"]


@dataclass(frozen=True)
class OutageWindow:
    start_s: float
    end_s: float
    kind: str
    spec: BehaviourSpec          # the provider's behaviour with this outage's parameters applied


def _lognormal(dist: LatencyDist) -> tuple[float, float | None]:
    """(median in seconds, sigma), sigma None for a constant: sample_latency_s's fit, done once."""
    median = dist.median / 1000.0
    p99 = dist.p99 / 1000.0
    if p99 <= median or median <= 0:
        return median, None
    return median, math.log(p99 / median) / _Z99


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
        self._latency = _lognormal(spec.latency)
        self._receipt = _lognormal(spec.receipt_delay)

    def mode_at(self, now: float) -> tuple[str, BehaviourSpec]:
        """The fail mode and behaviour in force at `now` (the latest-starting active outage wins)."""
        fail, spec = self.fail, self.spec
        for o in self.outages:
            if o.start_s > now:
                break
            if now < o.end_s:
                fail, spec = o.kind, o.spec
        return fail, spec

    def answer(self, now: float, confirm_receipt: bool) -> Answer:
        return Answer(*self.draw(now, confirm_receipt))

    def draw(self, now: float, confirm_receipt: bool) -> Draw:
        """The answer to a request sent at `now`, as a tuple of Answer's fields."""
        fail, spec = self.mode_at(now) if self.outages else (self.fail, self.spec)
        if fail == "none" and spec is self.spec:
            return self._healthy(now, confirm_receipt)
        a = draw_answer(spec, fail, self.rng, now, self.window, confirm_receipt)
        return a.kind, a.delay_s, a.status, a.retry_after_s, a.receipt_delay_s

    def _healthy(self, now: float, confirm_receipt: bool) -> Draw:
        """draw_answer(self.spec, "none", self.rng, now, self.window, confirm_receipt), unrolled."""
        rng = self.rng
        median, sigma = self._latency
        latency = median if sigma is None else median * math.exp(sigma * rng.gauss(0.0, 1.0))
        window = self.window
        if window.rate is not None:
            wait = window.take(now)
            if wait is not None:
                return "response", min(latency, 0.05), 429, max(wait, 0.001), None
        error_rate = self.spec.error_rate
        if error_rate > 0 and rng.random() < error_rate:
            return "response", latency, 503, None, None
        if not confirm_receipt:
            return "response", latency, 200, None, None
        median, sigma = self._receipt
        receipt = median if sigma is None else median * math.exp(sigma * rng.gauss(0.0, 1.0))
        return "response", latency, 202, None, receipt
