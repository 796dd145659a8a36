"""The scenario file: traffic, healthy provider behaviour, an outage timeline and CI expectations.

    name = "email-primary-hang"
    duration = "5m"                 # arrivals stop here; the run goes on until every message ends
    seed = 1
    routing = "../../routing.toml"  # relative to this file; `--routing` overrides it

    [traffic]
    rate = 20                       # Poisson arrivals per second (or "1200/m")
    route = "default"               # or a mix: routes = { default = 0.9, urgent = 0.1 }
    cancel = 0.05                   # share of messages the client cancels (Delivery.cancel) ...
    cancel_after = "2s"             # ... this long after accept (or { median = "1s", p99 = "5s" })
    [traffic.recipients]            # share of recipients holding each contact field (default 1)
    phone_number = 0.8
    [[traffic.bursts]]              # a window of other traffic: `factor` x rate (or its own `rate`)
    start = "1m"
    duration = "30s"
    factor = 10

    [providers.ses]                 # healthy behaviour (routingd.daemon.core.behaviour.BehaviourSpec)
    latency = { median = "80ms", p99 = "400ms" }

    [[outages]]
    provider = "ses"
    start = "1m"
    duration = "3m"
    kind = "hang"

    [expect]
    delivered_ratio = 0.999

    [simulation]                    # how the driver runs the engine
    cut_inflight_on_breaker_open = true   # fail over at once from attempts on a provider whose
                                          # breaker just opened (engine: on_provider_unhealthy)
    commit_delay = { median = "6ms", p99 = "20ms" }   # the store's commit before each call

Shape errors are reported like routing.toml's: PolicyError lines "FILE: key.path: reason".
References into the routing file (routes, providers) are checked by `bind_scenario`, once the
routing file of a run is known.
"""

from __future__ import annotations

import math
import os
import random
import tomllib
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..daemon.core.behaviour import OUTAGE_PARAMS, BehaviourSpec, Duration, Latency, LatencyDist, OutageParams, Rate
from ..daemon.config_files import read_config_text
from ..daemon.core.policy import PolicyError, Problem, problems_from_validation


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Share = Annotated[float, Field(ge=0.0, le=1.0)]


class BurstSection(_Strict):
    """A window of other traffic: from `start` for `duration`, arrivals at `rate` (per second, or
    "N/m") or at `factor` x the [traffic] rate, then back to it (docs/simulator.md "Scenario files")."""

    start: Duration
    duration: Duration
    rate: Rate | None = None
    factor: float | None = Field(default=None, gt=0.0)

    @field_validator("duration")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("a burst must last longer than 0")
        return v

    @model_validator(mode="after")
    def _one_rate(self) -> "BurstSection":
        if (self.rate is None) == (self.factor is None):
            raise ValueError("give a burst either rate (arrivals per second) or factor (x the traffic rate), one of them")
        return self


class TrafficSection(_Strict):
    rate: Rate
    route: str | None = None
    routes: dict[str, Annotated[float, Field(gt=0.0)]] | None = None
    recipients: dict[str, Share] = Field(default_factory=dict)
    # the client cancels this share of messages, each `cancel_after` its accept (a duration or a
    # log-normal { median, p99 } like a provider's latency); docs/simulator.md "Scenario files"
    cancel: Share = 0.0
    cancel_after: Latency | None = None
    # windows of other traffic (a burst, or a lull), in time order, none overlapping
    bursts: list[BurstSection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_route_form(self) -> "TrafficSection":
        if self.route is not None and self.routes is not None:
            raise ValueError("give either route or routes (a mix), not both")
        if self.cancel > 0.0 and self.cancel_after is None:
            raise ValueError("cancel needs cancel_after (how long after accept the client cancels)")
        if self.cancel == 0.0 and self.cancel_after is not None:
            raise ValueError("cancel_after without cancel (the share of messages cancelled) cancels nothing")
        if self.routes is not None and not self.routes:
            raise ValueError("routes must name at least one route")
        for a, b in zip(self.bursts, self.bursts[1:]):
            if b.start < a.start + a.duration:
                raise ValueError(f"bursts must be in time order and not overlap: the one starting at "
                                 f"{b.start / 1000:g}s starts before the one at {a.start / 1000:g}s ends")
        return self

    def segments(self) -> list[tuple[float, float]]:
        """The arrival rate over time: (from_s, rate) pairs in time order, the first from 0, the
        last lasting for ever."""
        base = float(self.rate)
        out: list[tuple[float, float]] = [(0.0, base)]
        for b in self.bursts:
            start, end = b.start / 1000.0, (b.start + b.duration) / 1000.0
            rate = float(b.rate) if b.rate is not None else base * float(b.factor or 0.0)
            if start == out[-1][0]:
                out[-1] = (start, rate)
            else:
                out.append((start, rate))
            out.append((end, base))
        return out

    def gaps(self, rng: random.Random) -> Callable[[float], float]:
        """`gap(now)`: the time from an arrival at `now` to the next one, Poisson at the rate of
        the time (segments()). Without bursts it is rng.expovariate(rate), draw for draw. With
        them, a gap that would cross a change of rate is drawn again from the change at the new
        rate: exact for a Poisson process (it has no memory), whatever the windows' lengths."""
        if not self.bursts:
            rate = float(self.rate)
            expovariate = rng.expovariate
            return lambda now: expovariate(rate)
        segs = self.segments()
        starts = [s for s, _ in segs]

        def gap(now: float) -> float:
            k = max(0, bisect_right(starts, now) - 1)
            t = now
            while True:             # bounded: one turn per change of rate ahead of `now`
                nxt = starts[k + 1] if k + 1 < len(starts) else math.inf
                t += rng.expovariate(segs[k][1])
                if t < nxt:
                    return t - now
                t, k = nxt, k + 1
        return gap

    def route_mix(self) -> list[tuple[str, float]]:
        """(route, share) pairs summing to 1, in file order."""
        if self.routes:
            total = sum(self.routes.values())
            return [(r, w / total) for r, w in self.routes.items()]
        return [(self.route or "default", 1.0)]


class OutageSection(_Strict, OutageParams):
    """One [[outages]] entry: which provider, from when (scenario time); what it does is
    OutageParams' (shared with the sandbox provider's `outages`, routingd.daemon.core.behaviour)."""

    provider: str
    start: Duration


class ExpectSection(_Strict):
    """CI assertions; each absent key is not checked. `violations` is always checked (0)."""

    delivered_ratio: Share | None = None                   # actual >= target
    p50_time_to_deliver: Duration | None = None            # actual <= target
    p95_time_to_deliver: Duration | None = None
    p99_time_to_deliver: Duration | None = None
    max_time_to_deliver: Duration | None = None
    expired: Annotated[int, Field(ge=0)] | None = None     # actual <= target
    undeliverable: Annotated[int, Field(ge=0)] | None = None
    duplicates: Annotated[int, Field(ge=0)] | None = None
    violations: Annotated[int, Field(ge=0)] = 0
    attempts_per_message: Annotated[float, Field(gt=0)] | None = None   # mean <= target
    time_to_route_around: Duration | None = None           # every outage's, <= target
    min_provider_failovers: Annotated[int, Field(ge=0)] | None = None   # actual >= target
    min_channel_failovers: Annotated[int, Field(ge=0)] | None = None
    # tries that spilled over under routingd's outbound rate limits, all providers together
    spilled: Annotated[int, Field(ge=0)] | None = None                  # actual <= target
    min_spilled: Annotated[int, Field(ge=0)] | None = None              # actual >= target
    throttled: Annotated[int, Field(ge=0)] | None = None                # 429s answered, <= target


# the daemon's write-ahead commit before each provider call, as measured by `simulate --live`'s
# calibration (docs/simulator.md "Simulated vs live")
DEFAULT_COMMIT_DELAY = LatencyDist(median=6, p99=20)


class SimulationSection(_Strict):
    """How the driver runs the engine (not the world being simulated).

    cut_inflight_on_breaker_open  when a provider's breaker opens, hand every pending message
        the engine's `on_provider_unhealthy` input, so attempts in flight (and back-off retries)
        on that provider fail over at once instead of each waiting out its own timeout. On by
        default (what a driver of the engine should do); false to measure what the cut is worth.
    commit_delay  the time from the engine's StartAttempt to the provider seeing the call: the
        daemon commits each attempt's row before its call goes out (write-ahead), while the
        attempt's deadline runs from the StartAttempt. A duration (constant) or { median, p99 }
        (log-normal through both); "0ms" calls at once. The default is what the daemon measured
        on SQLite with synchronous = FULL (docs/simulator.md "Simulated vs live")."""

    cut_inflight_on_breaker_open: bool = True
    commit_delay: Latency = DEFAULT_COMMIT_DELAY


class ScenarioModel(_Strict):
    name: str | None = None
    description: str = ""
    duration: Duration
    seed: int = 1
    routing: str = "routing.toml"
    traffic: TrafficSection
    providers: dict[str, BehaviourSpec] = Field(default_factory=dict)
    outages: list[OutageSection] = Field(default_factory=list)
    expect: ExpectSection = ExpectSection()
    simulation: SimulationSection = SimulationSection()

    @field_validator("duration")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("duration must be longer than 0")
        return v

    @model_validator(mode="after")
    def _bursts_inside(self) -> "ScenarioModel":
        for b in self.traffic.bursts:
            if b.start >= self.duration:
                raise ValueError(f"a burst starts at {b.start / 1000:g}s, at or after the run's duration "
                                 f"({self.duration / 1000:g}s, when arrivals stop): it would change nothing")
        return self


@dataclass(frozen=True)
class Scenario:
    """A validated scenario file."""

    model: ScenarioModel
    path: str
    name: str
    routing_path: str                   # the scenario's own routing file, resolved against `path`
    provider_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: str | None = None             # the file's text: errors name the line of their key

    @property
    def duration_s(self) -> float:
        return self.model.duration / 1000.0


def parse_scenario(text: str, path: str) -> Scenario:
    """Parse and validate scenario text; raise PolicyError naming `path` for every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(path, [Problem((), f"not valid TOML: {e}")], text) from None
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(path, problems_from_validation(e), text) from None
    # Keep only the keys the scenario sets, so that unset ones default to the routing file's
    # sandbox provider (see bind_scenario).
    overrides = {name: spec.model_dump(include=spec.model_fields_set)
                 for name, spec in model.providers.items()}
    base = os.path.dirname(os.path.abspath(path))
    routing = os.path.normpath(os.path.join(base, model.routing))
    name = model.name or os.path.splitext(os.path.basename(path))[0]
    return Scenario(model, path, name, routing, overrides, text)


def load_scenario(path: str) -> Scenario:
    return parse_scenario(read_config_text(path), path)


__all__ = ["BurstSection", "DEFAULT_COMMIT_DELAY", "ExpectSection", "OUTAGE_PARAMS", "OutageSection", "Scenario", "ScenarioModel", "SimulationSection",
           "TrafficSection", "load_scenario", "parse_scenario"]
