"""The checks of a parsed routing.toml the schema cannot make: names, unknown providers and
channels (also read from the raw tree when the schema failed, so a file is not fixed one round
at a time), a plan's shape against the [daemon] plan limits (which a request's inline routing
shares: daemon/core/plan.py), and the timeout warnings.

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import Problem
from .routing_model import PolicyModel
from .sections import BUILTIN_MESSAGE_TIMEOUT_MS, BUILTIN_PROVIDER_TIMEOUT_MS, DaemonSection

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_names(kind: str, names: Any, problems: list[Problem]) -> None:
    for name in names:
        if not NAME_RE.match(str(name)):
            problems.append(Problem((kind, name), "name may hold only letters, digits, '_', '-' and '.'"))


def _check_items(items: list, loc: tuple, channels: Mapping[str, Any], problems: list[Problem], depth: int = 0) -> None:
    if depth > 16:
        problems.append(Problem(loc, "route nesting is deeper than 16 levels"))
        return
    for i, item in enumerate(items):
        if isinstance(item, str):
            if item not in channels:
                problems.append(Problem(loc + (i,), f"unknown channel {item!r}"
                                        + (f"; defined channels: {', '.join(sorted(channels))}" if channels else "")))
        else:
            _check_items(item.channels, loc + (i, "channels"), channels, problems, depth + 1)


def plan_limit_msg(key: str, limit: int, what: str) -> str:
    return f"more than {limit} {what} (the limit [daemon] {key})"


def plan_shape_problems(items: list, loc: tuple, daemon: DaemonSection, once: bool = False) -> list[Problem]:
    """A route's (or inline routing's) items against the plan limits: nesting depth, channels
    in the plan and, with `once` (a request's inline routing), the same channel twice (it would
    deliver twice to one recipient; a route in the file may do so on purpose).

    Walks at most max_plan_channels channels and stops at the first limit passed, so a request
    of any size costs no more than the limit to check."""
    problems: list[Problem] = []
    seen: set[str] = set()
    count = 0
    max_ch, max_depth = daemon.max_plan_channels, daemon.max_plan_depth
    # an explicit stack, not recursion: (items, loc, depth, next index)
    stack: list[tuple[list, tuple, int, int]] = [(list(items), loc, 1, 0)]
    while stack:
        seq, here, depth, i = stack.pop()
        if i >= len(seq):
            continue
        stack.append((seq, here, depth, i + 1))
        item = seq[i]
        if isinstance(item, str):
            if once and item in seen:
                return [Problem(here + (i,), f"channel {item!r} appears twice in one plan")]
            seen.add(item)
            count += 1
            if count > max_ch:
                return [Problem(here + (i,), plan_limit_msg("max_plan_channels", max_ch, "channels in one plan"))]
        elif hasattr(item, "channels"):
            if depth > max_depth:
                return [Problem(here + (i,), plan_limit_msg("max_plan_depth", max_depth,
                                                            "levels of nested groups"))]
            stack.append((list(item.channels), here + (i, "channels"), depth + 1, 0))
    return problems


def _route_channels(items: list, depth: int = 0) -> list[str]:
    """Channel names of a route's item list, nested groups included, in order, once each."""
    out: list[str] = []
    for item in items:
        names = [item] if isinstance(item, str) else (_route_channels(item.channels, depth + 1) if depth < 16 else [])
        out += [n for n in names if n not in out]
    return out


def validate_references(model: PolicyModel) -> tuple[list[Problem], list[str]]:
    """Cross-references the schema cannot see: unknown providers/channels, timeout sanity."""
    problems: list[Problem] = []
    warnings: list[str] = []
    check_names("providers", model.providers, problems)
    check_names("channels", model.channels, problems)
    check_names("routes", model.routes, problems)
    for cname, ch in model.channels.items():
        for i, listed in enumerate(ch.providers):
            if listed not in model.providers:
                problems.append(Problem(("channels", cname, "providers", i), f"unknown provider {listed!r}"
                                        + (f"; defined providers: {', '.join(sorted(model.providers))}" if model.providers else "")))
        if len(set(ch.providers)) != len(ch.providers):
            problems.append(Problem(("channels", cname, "providers"), "a provider is listed twice"))
        if len(ch.providers) > model.daemon.max_channel_providers:
            problems.append(Problem(("channels", cname, "providers"), plan_limit_msg(
                "max_channel_providers", model.daemon.max_channel_providers, "providers in one channel")))
    for rname, r in model.routes.items():
        _check_items(r.channels, ("routes", rname, "channels"), model.channels, problems)
        problems += plan_shape_problems(r.channels, ("routes", rname, "channels"), model.daemon)
    for pname, p in model.providers.items():
        if p.backoff.max < p.backoff.base:
            problems.append(Problem(("providers", pname, "backoff", "max"), "must be at least backoff.base"))
    if model.daemon.mqtt is None:
        for pname, p in model.providers.items():
            if p.type == "mqtt":
                warnings.append(f"providers.{pname}: type \"mqtt\" but there is no [daemon.mqtt]: every attempt "
                                "fails at once (network, \"[daemon.mqtt] is not configured\") and fails over")
    route_sets_provider_timeout = any(r.timeouts.provider is not None for r in model.routes.values())
    for pname, p in model.providers.items():
        slow = p.breaker.slow if p.breaker is not False else None
        if slow is None or slow is False:     # unset: half the timeout, always shorter
            continue
        if p.timeout is not None:
            timeout, where = p.timeout, f"providers.{pname}.timeout"
        elif route_sets_provider_timeout:
            continue        # depends on the route: explain ROUTE shows it
        else:
            timeout = model.timeouts.provider if model.timeouts.provider is not None else BUILTIN_PROVIDER_TIMEOUT_MS
            where = "timeouts.provider" if model.timeouts.provider is not None else "the built-in provider timeout"
        if slow >= timeout:
            warnings.append(f"providers.{pname}.breaker.slow ({slow} ms) is not shorter than {where} ({timeout} ms): "
                            "an attempt times out before it could be marked slow, so it has no effect")
    msg_default = model.timeouts.message if model.timeouts.message is not None else BUILTIN_MESSAGE_TIMEOUT_MS
    if model.timeouts.channel is not None and model.timeouts.channel > msg_default:
        warnings.append(f"timeouts.channel ({model.timeouts.channel} ms) is larger than the message timeout "
                        f"({msg_default} ms); the message deadline will cut it short")
    for cname, ch in model.channels.items():
        if ch.timeout is not None and ch.timeout > msg_default:
            warnings.append(f"channels.{cname}.timeout ({ch.timeout} ms) is larger than the message timeout "
                            f"({msg_default} ms); the message deadline will cut it short")
    for rname, r in model.routes.items():
        mt = r.timeouts.message if r.timeouts.message is not None else msg_default
        ct = r.timeouts.channel
        if ct is not None and ct > mt:
            warnings.append(f"routes.{rname}.timeouts.channel ({ct} ms) is larger than its message timeout ({mt} ms)")
        if r.timeouts.message is None:
            continue        # the file-level warnings above already cover this route
        for cname in _route_channels(r.channels):
            used = model.channels.get(cname)
            if used is None or used.timeout is None and ct is not None:
                continue    # unknown (reported) or the route's own channel timeout (warned above)
            eff = used.timeout if used.timeout is not None else model.timeouts.channel
            if eff is not None and eff > mt:
                warnings.append(f"routes.{rname}: channel {cname!r} has a timeout ({eff} ms) larger than the "
                                f"route's message timeout ({mt} ms); the message deadline will cut it short")
    if model.routes and "default" not in model.routes:
        warnings.append("no [routes.default]: every send must name a route or carry inline routing")
    return problems, warnings


def _dict_at(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def raw_reference_problems(raw: Any) -> list[Problem]:
    """Unknown providers in channels and unknown channels in routes, read from the raw tree.

    Used when the schema already failed, so that a file is not fixed one round at a time:
    the cross-references are reported with the schema errors.
    """
    if not isinstance(raw, dict):
        return []
    providers = _dict_at(raw, "providers")
    channels = _dict_at(raw, "channels")
    problems: list[Problem] = []
    for cname, ch in channels.items():
        plist = ch.get("providers") if isinstance(ch, dict) else None
        if isinstance(plist, list):
            for i, p in enumerate(plist):
                if isinstance(p, str) and p not in providers:
                    problems.append(Problem(("channels", cname, "providers", i), f"unknown provider {p!r}"
                                            + (f"; defined providers: {', '.join(sorted(providers))}"
                                               if providers else "")))

    def walk(items: Any, loc: tuple, depth: int) -> None:
        if not isinstance(items, list) or depth > 16:
            return
        for i, item in enumerate(items):
            if isinstance(item, str) and item not in channels:
                problems.append(Problem(loc + (i,), f"unknown channel {item!r}"
                                        + (f"; defined channels: {', '.join(sorted(channels))}" if channels else "")))
            elif isinstance(item, dict):
                walk(item.get("channels"), loc + (i, "channels"), depth + 1)

    routes = _dict_at(raw, "routes")
    for rname, r in routes.items():
        if isinstance(r, dict):
            walk(r.get("channels"), ("routes", rname, "channels"), 0)
    return problems
