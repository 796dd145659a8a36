"""`routingd explain`: where each effective timeout of a plan comes from, and a readable tree.

The plan itself (`daemon.core.plan.resolve_plan`) is the authority on the values; this module
only labels them with the precedence level that supplied them (DESIGN.md "Timeout hierarchy"),
so that `explain` can print e.g. "timeout 20s  (providers.ses.timeout)". A label whose value
disagrees with the plan is shown as "(source unknown)" rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core.durations import format_duration_ms
from .core.plan import ChannelStep, GroupStep, Plan, ProviderStep, Step
from .core.policy import (BUILTIN_CHANNEL_TIMEOUT_MS, BUILTIN_MESSAGE_TIMEOUT_MS,
                          BUILTIN_PROVIDER_TIMEOUT_MS, Policy)
from .core.request import MessageRequest

BUILTIN = "built-in default"


@dataclass(frozen=True)
class Sourced:
    """An effective timeout and the key path of the precedence level that set it."""

    ms: int
    source: str


@dataclass(frozen=True)
class TimeoutSources:
    message: Sourced
    channels: dict[str, Sourced]
    providers: dict[str, Sourced]


def _pick(*levels: tuple[int | None, str]) -> Sourced:
    for ms, source in levels:
        if ms is not None:
            return Sourced(ms, source)
    raise AssertionError("unreachable: the last level is a built-in default")


def timeout_sources(policy: Policy, route: str, request: MessageRequest | None = None) -> TimeoutSources:
    """Label every channel's and provider's timeout (and the message's) with its source.

    `route` must exist in the policy (resolve_plan has checked it). Every channel and provider of
    the policy is labelled, whether or not the plan uses it.
    """
    m = policy.model
    r = m.routes[route]
    req_t = request.timeout if request is not None else None
    req_channels = request.channels if request is not None else {}
    req_providers = request.providers if request is not None else {}

    message = _pick((req_t.message if req_t else None, "request message.timeout.message"),
                    (r.timeouts.message, f"routes.{route}.timeouts.message"),
                    (m.timeouts.message, "timeouts.message"),
                    (BUILTIN_MESSAGE_TIMEOUT_MS, BUILTIN))
    channels: dict[str, Sourced] = {}
    for name, c in m.channels.items():
        ov = req_channels.get(name)
        channels[name] = _pick(
            (ov.effective_timeout if ov else None, f"request message.channels.{name}.timeout"),
            (c.timeout, f"channels.{name}.timeout"),
            (req_t.channel if req_t else None, "request message.timeout.channel"),
            (r.timeouts.channel, f"routes.{route}.timeouts.channel"),
            (m.timeouts.channel, "timeouts.channel"),
            (BUILTIN_CHANNEL_TIMEOUT_MS, BUILTIN))
    providers: dict[str, Sourced] = {}
    for name, p in m.providers.items():
        ov = req_providers.get(name)
        providers[name] = _pick(
            (ov.effective_timeout if ov else None, f"request message.providers.{name}.timeout"),
            (p.timeout, f"providers.{name}.timeout"),
            (req_t.provider if req_t else None, "request message.timeout.provider"),
            (r.timeouts.provider, f"routes.{route}.timeouts.provider"),
            (m.timeouts.provider, "timeouts.provider"),
            (BUILTIN_PROVIDER_TIMEOUT_MS, BUILTIN))
    return TimeoutSources(message, channels, providers)


def _label(actual_ms: int, sourced: Sourced | None) -> str:
    if sourced is None or sourced.ms != actual_ms:
        return "source unknown"
    return sourced.source


def _dur(ms: int) -> str:
    return format_duration_ms(ms)


_METHOD_TEXT = {
    "single": "in order until one delivers",
    "all": "every item at once; delivered if any delivers",
}


def render_tree(plan: Plan, sources: TimeoutSources, recipient: dict[str, Any] | None = None,
                failover_on: list[int | str] | None = None) -> str:
    """The plan as an indented, numbered tree with every timeout and its source."""
    lines: list[str] = []
    lines.append(f"route {plan.route}: {plan.method} ({_METHOD_TEXT.get(plan.method, plan.method)})")
    if plan.policy_version:
        lines.append(f"  policy version {plan.policy_version}")
    lines.append(f"  message timeout {_dur(plan.message_timeout_ms)}  "
                 f"({_label(plan.message_timeout_ms, sources.message)})")
    if failover_on is not None:
        lines.append("  fail over on " + ", ".join(str(e) for e in failover_on)
                     + "; any other outcome fails the channel")
    _render_items(plan.items, sources, recipient, lines, indent="  ")
    return "\n".join(lines) + "\n"


def _render_items(items: tuple[Step, ...], sources: TimeoutSources, recipient: dict[str, Any] | None,
                  lines: list[str], indent: str) -> None:
    for i, step in enumerate(items, 1):
        head = f"{indent}{i}. "
        sub = indent + " " * len(f"{i}. ")
        if isinstance(step, GroupStep):
            lines.append(f"{head}group: {step.method} ({_METHOD_TEXT.get(step.method, step.method)})")
            _render_items(step.items, sources, recipient, lines, sub)
        else:
            _render_channel(step, head, sub, sources, recipient, lines)


def _render_channel(step: ChannelStep, head: str, sub: str, sources: TimeoutSources,
                    recipient: dict[str, Any] | None, lines: list[str]) -> None:
    text = f"{head}channel {step.channel}: {step.method}"
    if step.requires:
        text += f", requires to.{step.requires}"
        if recipient is not None and not recipient.get(step.requires):
            text += f"  -- SKIPPED: the recipient has no {step.requires}"
    lines.append(text)
    lines.append(f"{sub}timeout {_dur(step.timeout_ms)}  "
                 f"({_label(step.timeout_ms, sources.channels.get(step.channel))})")
    width = max(len(p.provider) for p in step.providers) if step.providers else 0
    for j, p in enumerate(step.providers, 1):
        lines.append(f"{sub}{j}. {p.provider:<{width}}  timeout {_dur(p.timeout_ms)}  "
                     f"({_label(p.timeout_ms, sources.providers.get(p.provider))})")
        lines.append(f"{sub}   {' ' * width}  {_provider_details(p)}")


def _provider_details(p: ProviderStep) -> str:
    parts = [f"retries {p.retries}"]
    if p.retries:
        parts.append(f"back-off {_dur(p.backoff_base_ms)}..{_dur(p.backoff_max_ms)}")
    if p.confirm == "receipt":
        parts.append(f"confirm receipt within {_dur(p.receipt_timeout_ms)}")
    else:
        parts.append("confirm response")
    if p.breaker_failures is None:
        parts.append("breaker off")
    else:
        parts.append(f"breaker {p.breaker_failures} failures / {_dur(p.breaker_cooldown_ms)} cooldown")
    return ", ".join(parts)
