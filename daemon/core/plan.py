"""Timeout resolution: a route plus a request's overrides -> a fully resolved failover plan.

Precedence (most specific wins; at equal specificity request > route > file):

  provider P: request providers.P.timeout > [providers.P] timeout
              > request channels.C.timeouts.provider (P in channel C) > request timeout.provider
              > route timeouts.provider > [timeouts] provider > 5 min
  channel C:  request channels.C.timeout > [channels.C] timeout > request timeout.channel
              > route timeouts.channel > [timeouts] channel > 30 min
  message:    request timeout.message > route timeouts.message > [timeouts] message > 72 h
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .policy import (BUILTIN_CHANNEL_TIMEOUT_MS, BUILTIN_MESSAGE_TIMEOUT_MS,
                     BUILTIN_PROVIDER_TIMEOUT_MS, Policy, Problem, RouteGroup, TimeoutsSection,
                     plan_limit_msg, plan_shape_problems)
from .errors import PlanError
from .request import MessageRequest


INLINE_ROUTE = "(inline)"   # Plan.route of inline routing sent without a route and no [routes.default]


@dataclass(frozen=True)
class FailoverRule:
    """Which outcomes fail over (retry/next provider); anything else fails the channel."""

    codes: frozenset[int] = frozenset({408, 429})
    classes: frozenset[int] = frozenset({5})
    timeout: bool = True
    network: bool = True

    @classmethod
    def from_entries(cls, entries: list[int | str]) -> "FailoverRule":
        codes = frozenset(e for e in entries if isinstance(e, int))
        classes = frozenset(int(e[0]) for e in entries if isinstance(e, str) and e.endswith("xx"))
        return cls(codes, classes, "timeout" in entries, "network" in entries)

    def status_retryable(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes


@dataclass(frozen=True)
class ProviderStep:
    provider: str
    timeout_ms: int
    retries: int = 0
    confirm: str = "response"
    receipt_timeout_ms: int = 120_000
    backoff_base_ms: int = 500
    backoff_max_ms: int = 30_000
    breaker_failures: int | None = 5       # None: breaker off
    breaker_cooldown_ms: int = 30_000
    breaker_slow_ms: int | None = None     # None: only an attempt's end counts (no slow-call mark)
    timeout_source: str = field(default="", compare=False)   # the precedence level that set timeout_ms


@dataclass(frozen=True)
class ChannelStep:
    channel: str
    timeout_ms: int
    providers: tuple[ProviderStep, ...]
    method: str = "single"
    requires: str | None = None
    timeout_source: str = field(default="", compare=False)   # the precedence level that set timeout_ms


@dataclass(frozen=True)
class GroupStep:
    method: str
    items: tuple[Union[ChannelStep, "GroupStep"], ...]


Step = Union[ChannelStep, GroupStep]


@dataclass(frozen=True)
class Plan:
    route: str
    method: str
    message_timeout_ms: int
    items: tuple[Step, ...]
    failover: FailoverRule = field(default_factory=FailoverRule)
    policy_version: str = ""
    message_timeout_source: str = field(default="", compare=False)
    # the route as one group, made once per plan (every Delivery walks it); a field set in
    # __post_init__, not a cached_property: compiled by mypyc, that would be rebuilt on every read
    root: GroupStep = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", GroupStep(self.method, self.items))

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "method": self.method,
                "message_timeout_ms": self.message_timeout_ms,
                "items": [_step_json(s) for s in self.items]}


def _step_json(step: Step) -> dict[str, Any]:
    if isinstance(step, GroupStep):
        return {"method": step.method, "items": [_step_json(s) for s in step.items]}
    return {"channel": step.channel, "method": step.method, "timeout_ms": step.timeout_ms,
            "requires": step.requires,
            "providers": [{"provider": p.provider, "timeout_ms": p.timeout_ms, "retries": p.retries,
                           "confirm": p.confirm,
                           **({"receipt_timeout_ms": p.receipt_timeout_ms} if p.confirm == "receipt" else {}),
                           "breaker": None if p.breaker_failures is None else
                           {"failures": p.breaker_failures, "cooldown_ms": p.breaker_cooldown_ms,
                            **({} if p.breaker_slow_ms is None else {"slow_ms": p.breaker_slow_ms})}}
                          for p in step.providers]}


BUILTIN = "built-in default"


def _first(*levels: tuple[int | None, str]) -> tuple[int, str]:
    """The first level that is set, most specific first, and the key path that names it."""
    for ms, source in levels:
        if ms is not None:
            return ms, source
    raise AssertionError("unreachable: the last level is a built-in default")


def resolve_plan(policy: Policy, route: str | None = None, request: MessageRequest | None = None) -> Plan:
    """Resolve a route (and a send request's overrides) into a plan with every timeout set."""
    m = policy.model
    route_name = route if route is not None else (request.route if request and request.route else "default")
    problems: list[Problem] = []
    inline = request is not None and request.routing is not None
    named = route is not None or (request is not None and bool(request.route))
    if route_name in m.routes:
        r = m.routes[route_name]
        rt, method, items = r.timeouts, r.method, r.channels
    elif inline and not named:
        # inline routing needs no route: without [routes.default] only the file's timeouts apply
        route_name, rt, method, items = INLINE_ROUTE, TimeoutsSection(), "single", []
    else:
        known = ", ".join(sorted(m.routes)) or "none defined"
        raise PlanError([Problem(("message", "route"), f"unknown route {route_name!r}; routes: {known}")])
    req_t = request.timeout if request and request.timeout else None
    req_channels = request.channels if request else {}
    req_providers = request.providers if request else {}
    if request is not None and request.routing is not None:
        method, items = request.routing.method, request.routing.channels

    limits = m.daemon
    if len(req_channels) + len(req_providers) > limits.max_overrides:
        raise PlanError([Problem(("message",), plan_limit_msg(
            "max_overrides", limits.max_overrides, "channel and provider overrides in one request"))])
    loc = ("message", "routing", "channels") if request is not None and request.routing is not None \
        else ("routes", route_name, "channels")
    # before anything is built: a plan past a limit costs only the walk up to that limit
    shape = plan_shape_problems(list(items), loc, limits, once=inline)
    if shape:
        raise PlanError(shape)

    for name in req_channels:
        if name not in m.channels:
            problems.append(Problem(("message", "channels", name), f"unknown channel {name!r}"))
    for name in req_providers:
        if name not in m.providers:
            problems.append(Problem(("message", "providers", name), f"unknown provider {name!r}"))

    message_ms, message_src = _first((req_t.message if req_t else None, "request message.timeout.message"),
                                     (rt.message, f"routes.{route_name}.timeouts.message"),
                                     (m.timeouts.message, "timeouts.message"),
                                     (BUILTIN_MESSAGE_TIMEOUT_MS, BUILTIN))

    def provider_step(pname: str, cname: str, via: int | None) -> ProviderStep:
        p = m.providers[pname]
        ov = req_providers.get(pname)
        t, src = _first((ov.effective_timeout if ov else None, f"request message.providers.{pname}.timeout"),
                        (p.timeout, f"providers.{pname}.timeout"),
                        (via, f"request message.channels.{cname}.timeouts.provider"),
                        (req_t.provider if req_t else None, "request message.timeout.provider"),
                        (rt.provider, f"routes.{route_name}.timeouts.provider"),
                        (m.timeouts.provider, "timeouts.provider"),
                        (BUILTIN_PROVIDER_TIMEOUT_MS, BUILTIN))
        br = p.breaker
        # breaker.slow unset: the slow-call mark at half this attempt's timeout (on by default:
        # docs/performance.md "Failover quality"); false: no mark
        slow = None if br is False or br.slow is False else br.slow if br.slow is not None else max(1, t // 2)
        return ProviderStep(pname, t, p.retries, p.confirm, p.receipt_timeout, p.backoff.base, p.backoff.max,
                            None if br is False else br.failures, 0 if br is False else br.cooldown, slow, src)

    def channel_step(cname: str) -> ChannelStep:
        c = m.channels[cname]
        if len(c.providers) > limits.max_channel_providers:
            problems.append(Problem(("channels", cname, "providers"), plan_limit_msg(
                "max_channel_providers", limits.max_channel_providers, "providers in one channel")))
        ov = req_channels.get(cname)
        t, src = _first((ov.effective_timeout if ov else None, f"request message.channels.{cname}.timeout"),
                        (c.timeout, f"channels.{cname}.timeout"),
                        (req_t.channel if req_t else None, "request message.timeout.channel"),
                        (rt.channel, f"routes.{route_name}.timeouts.channel"),
                        (m.timeouts.channel, "timeouts.channel"),
                        (BUILTIN_CHANNEL_TIMEOUT_MS, BUILTIN))
        # Courier's per-request provider failover: channels.C.providers (the order, each one of
        # the channel's own providers) and channels.C.routing_method (docs/api.md)
        names = list(c.providers)
        if ov is not None and ov.providers is not None:
            for i, pname in enumerate(ov.providers):
                if pname not in c.providers:
                    problems.append(Problem(("message", "channels", cname, "providers", i),
                                            f"{pname!r} is not a provider of channel {cname!r}; "
                                            f"its providers: {', '.join(c.providers)}"))
            if len(set(ov.providers)) != len(ov.providers):
                problems.append(Problem(("message", "channels", cname, "providers"), "a provider is named twice"))
            names = list(ov.providers)
        method = ov.routing_method if ov is not None and ov.routing_method is not None else c.method
        via = ov.provider_timeout if ov is not None else None
        return ChannelStep(cname, t, tuple(provider_step(p, cname, via) for p in names if p in c.providers),
                           method, c.requires, src)

    def build(seq: list, loc: tuple, depth: int = 0) -> tuple[Step, ...]:
        out: list[Step] = []
        if depth > 16:
            problems.append(Problem(loc, "routing nesting is deeper than 16 levels"))
            return ()
        for i, item in enumerate(seq):
            if isinstance(item, str):
                if item not in m.channels:
                    problems.append(Problem(loc + (i,), f"unknown channel {item!r}"))
                    continue
                out.append(channel_step(item))
            elif isinstance(item, RouteGroup):
                out.append(GroupStep(item.method, build(item.channels, loc + (i, "channels"), depth + 1)))
        return tuple(out)

    steps = build(list(items), loc)
    if problems:
        raise PlanError(problems)
    return Plan(route_name, method, message_ms, steps, FailoverRule.from_entries(list(m.failover.on)),
                policy.version, message_src)
