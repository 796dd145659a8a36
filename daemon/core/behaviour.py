"""Provider behaviour models shared by the daemon's `sandbox` provider and the simulator.

One model, two users: the simulator draws simulated provider answers from it and the daemon's
in-process `sandbox` provider draws real (slept) answers from it, so a demo on the daemon and a
drill in the simulator behave alike. Pure: every draw takes the random source as a parameter.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .durations import parse_duration_ms
from .limiter import TOKEN_EPSILON

Duration = Annotated[int, BeforeValidator(parse_duration_ms)]

OutageKind = Literal["down", "hang", "error", "throttle", "slow", "flaky", "no-receipts"]
FailMode = Literal["none", "down", "hang", "error", "throttle", "slow", "flaky", "no-receipts"]
OUTAGE_KINDS: tuple[str, ...] = ("down", "hang", "error", "throttle", "slow", "flaky", "no-receipts")

# z-score of the 99th percentile of a standard normal distribution
_Z99 = 2.3263478740408408


class LatencyDist(BaseModel):
    """Log-normal latency fitted to a median and a 99th percentile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    median: Duration
    p99: Duration

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyDist":
        if self.p99 < self.median:
            raise ValueError("p99 must be at least the median")
        return self

    @cached_property
    def fit(self) -> tuple[float, float | None]:
        """(median in seconds, log-normal sigma), sigma None for a constant latency; computed once
        per distribution (the simulator draws from the same one for every attempt)."""
        median = self.median / 1000.0
        p99 = self.p99 / 1000.0
        if p99 <= median or median <= 0:
            return median, None
        return median, math.log(p99 / median) / _Z99


def _latency(value: object) -> object:
    if isinstance(value, dict):
        return value
    ms = parse_duration_ms(value)
    return {"median": ms, "p99": ms}


Latency = Annotated[LatencyDist, BeforeValidator(_latency)]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(ms|s|m|h)\s*$")


def _rate(value: object) -> object:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _RATE.match(value)
        if not m:
            raise ValueError(f"bad rate {value!r}; write e.g. \"200/s\" or \"1000/m\"")
        per = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        return float(m.group(1)) / per
    raise ValueError(f"bad rate {value!r}; write e.g. \"200/s\"")


Rate = Annotated[float, BeforeValidator(_rate), Field(gt=0)]


class BehaviourSpec(BaseModel):
    """A provider's healthy behaviour: latency, error share, rate limit, receipt delay."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latency: Latency = LatencyDist(median=80, p99=80)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_limit: Rate | None = None
    receipt_delay: Latency = LatencyDist(median=1000, p99=1000)
    # parameters of the outage kinds
    slow_factor: float = Field(default=10.0, ge=1.0)
    flaky_error_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    throttle_retry_after: Duration = 1000


@dataclass(frozen=True)
class Answer:
    """What a provider does with one request.

    kind: "response" (an HTTP-like status after `delay_s`), "refused" (connection refused after
    `delay_s`), "hang" (never answers). `receipt_delay_s` is set when a 2xx will be followed by a
    delivered receipt that long after the response; None when no receipt will ever come.
    """

    kind: Literal["response", "refused", "hang"]
    delay_s: float = 0.0
    status: int | None = None
    retry_after_s: float | None = None
    receipt_delay_s: float | None = None


def sample_latency_s(dist: LatencyDist, rng: random.Random) -> float:
    """One latency draw in seconds from the log-normal fitted to (median, p99)."""
    median, sigma = dist.fit
    if sigma is None:
        return median
    return median * math.exp(sigma * rng.gauss(0.0, 1.0))


class RateWindow:
    """Token bucket over simulated or real time (time passed in); one per provider."""

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate = rate_per_s
        self.capacity = max(1.0, rate_per_s or 1.0)
        self.tokens = self.capacity
        self.last = 0.0

    def take(self, now: float) -> float | None:
        """Take one token; None when allowed, else the seconds until the next token."""
        if self.rate is None:
            return None
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        # the limiter's tolerance (limiter.TOKEN_EPSILON): a call routingd's bucket of the same
        # rate and depth lets through exactly on time is not refused here for a rounding error
        if self.tokens >= 1.0 - TOKEN_EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return None
        return (1.0 - self.tokens) / self.rate


# (kind, delay_s, status, retry_after_s, receipt_delay_s): an Answer's fields, in its order
Draw = tuple[Literal["response", "refused", "hang"], float, Union[int, None], Union[float, None], Union[float, None]]

_REFUSED: Draw = ("refused", 0.001, None, None, None)
_HANG: Draw = ("hang", 0.0, None, None, None)


def draw(
    spec: BehaviourSpec,
    fail: str,
    rng: random.Random,
    now: float,
    window: RateWindow | None = None,
    confirm_receipt: bool = False,
) -> Draw:
    """Draw a provider's answer to one request at time `now` under outage mode `fail`, as a
    tuple of Answer's fields (the simulator draws one per attempt and keeps no Answer object)."""
    if fail != "none":
        if fail == "down":
            return _REFUSED
        if fail == "hang":
            return _HANG
    median, sigma = spec.latency.fit            # = sample_latency_s(spec.latency, rng), inlined
    latency = median if sigma is None else median * math.exp(sigma * rng.gauss(0.0, 1.0))
    if fail != "none":
        if fail == "error":
            return "response", min(latency, 0.05), 503, None, None
        if fail == "throttle":
            return "response", min(latency, 0.05), 429, spec.throttle_retry_after / 1000.0, None
    if window is not None and window.rate is not None:
        wait = window.take(now)
        if wait is not None:
            return "response", min(latency, 0.05), 429, max(wait, 0.001), None
    if fail == "slow":
        latency *= spec.slow_factor
    error_rate = spec.flaky_error_rate if fail == "flaky" else spec.error_rate
    if error_rate > 0 and rng.random() < error_rate:
        return "response", latency, 503, None, None
    if not confirm_receipt:
        return "response", latency, 200, None, None
    receipt = None if fail == "no-receipts" else sample_latency_s(spec.receipt_delay, rng)
    return "response", latency, 202, None, receipt


def draw_answer(
    spec: BehaviourSpec,
    fail: str,
    rng: random.Random,
    now: float,
    window: RateWindow | None = None,
    confirm_receipt: bool = False,
) -> Answer:
    """draw()'s answer as an Answer (the daemon's sandbox provider uses this form)."""
    return Answer(*draw(spec, fail, rng, now, window, confirm_receipt))


# ---- outages: a provider's fail mode switched on for a while (the scenario's [[outages]] in the
# simulator, a sandbox provider's `outages` in the daemon; docs/simulator.md, docs/configuration.md)

# each outage parameter: (the kind it belongs to, the BehaviourSpec field it overrides)
OUTAGE_PARAMS = {"factor": ("slow", "slow_factor"), "error_rate": ("flaky", "flaky_error_rate"),
                 "retry_after": ("throttle", "throttle_retry_after")}


class OutageParams(BaseModel):
    """What an outage does: its kind and that kind's parameter; where and when are the user's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    duration: Duration
    kind: OutageKind
    factor: float | None = Field(default=None, ge=1.0)            # slow: latency x factor
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)  # flaky: share of 5xx
    retry_after: Duration | None = None                             # throttle: Retry-After

    @field_validator("duration")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("an outage must last longer than 0")
        return v

    @model_validator(mode="after")
    def _params_fit_kind(self) -> "OutageParams":
        for param, (kind, _) in OUTAGE_PARAMS.items():
            if getattr(self, param) is not None and self.kind != kind:
                raise ValueError(f"{param} applies only to kind = \"{kind}\", not \"{self.kind}\"")
        return self

    def behaviour_update(self) -> dict[str, float | int]:
        """BehaviourSpec fields this outage overrides while it lasts."""
        return {f: getattr(self, p) for p, (_, f) in OUTAGE_PARAMS.items() if getattr(self, p) is not None}


@dataclass(frozen=True)
class OutageWindow:
    """One outage on one clock (simulated seconds, or the wall clock's for the sandbox)."""

    start_s: float
    end_s: float
    kind: str
    spec: BehaviourSpec          # the provider's behaviour with this outage's parameters applied


def mode_at(fail: str, spec: BehaviourSpec, windows: tuple[OutageWindow, ...], now: float) -> tuple[str, BehaviourSpec]:
    """The fail mode and behaviour in force at `now`: the latest-starting outage active then, else
    the provider's own (`windows` sorted by start)."""
    for o in windows:
        if o.start_s > now:
            break
        if now < o.end_s:
            fail, spec = o.kind, o.spec
    return fail, spec


def behaviour_of(config: BaseModel) -> BehaviourSpec:
    """The behaviour part of a provider config: a `sandbox` provider *is* a BehaviourSpec, so its
    latency, error_rate, rate_limit, receipt_delay and outage parameters come through unchanged;
    any other config gives the defaults."""
    data = config.model_dump(include=set(BehaviourSpec.model_fields) & set(type(config).model_fields))
    return BehaviourSpec.model_validate(data)


__all__ = [
    "Answer", "BehaviourSpec", "behaviour_of", "draw", "Draw", "Duration", "FailMode", "Latency", "LatencyDist", "OUTAGE_KINDS",
    "OutageKind", "OUTAGE_PARAMS", "OutageParams", "OutageWindow", "RateWindow", "mode_at", "draw_answer", "sample_latency_s", "Union",
]
