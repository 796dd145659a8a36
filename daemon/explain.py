"""`routingd explain`: where each effective timeout of a plan comes from, and a readable tree.

The plan (`routingd.daemon.core.plan.resolve_plan`) is the authority on the values and on where each came
from: it records the precedence level that supplied every timeout (docs/configuration.md "Timeout
precedence"), so that `explain` can print e.g. "timeout 20s  (providers.ses.timeout)".
"""

from __future__ import annotations

from typing import Any

from .adapters import Content
from .content import fallback, plan_channels, render_message
from .core.durations import format_duration_ms
from .core.limiter import Limit
from .core.plan import ChannelStep, GroupStep, Plan, ProviderStep, Step
from .core.policy import Policy
from .core.request import MessageRequest

def _label(source: str) -> str:
    return source or "source unknown"


def _dur(ms: int) -> str:
    return format_duration_ms(ms)


_METHOD_TEXT = {
    "single": "in order until one delivers",
    "all": "every item at once; delivered if any delivers",
}


def outbound_limits(policy: Policy) -> dict[str, Limit]:
    """Each limited provider's outbound limit, as the daemon hands it to its limiter
    (docs/configuration.md "Rate limits and priorities")."""
    out: dict[str, Limit] = {}
    for name, p in policy.providers.items():
        lim = p.outbound_limit()
        if lim is not None:
            out[name] = lim
    return out


def _burst(lim: Limit) -> float | None:
    """The bucket size in force: the configured burst, else one second's worth, at least 1
    (as daemon/core/limiter.py sizes it)."""
    if lim.rate is None:
        return None
    return lim.burst if lim.burst is not None else max(1.0, lim.rate)


def limit_json(lim: Limit | None) -> dict[str, Any] | None:
    """A provider's limit in `explain --json`: rate_limit in calls a second, burst, max_inflight."""
    if lim is None:
        return None
    return {"rate_limit": lim.rate, "burst": _burst(lim), "max_inflight": lim.max_inflight}


def add_limits(doc: dict[str, Any], limits: dict[str, Limit]) -> None:
    """Put each provider's `limit` (or null) into a plan's JSON (Plan.to_json), in place."""
    for item in doc.get("items", []):
        if "items" in item:
            add_limits(item, limits)
        for p in item.get("providers", []):
            p["limit"] = limit_json(limits.get(p["provider"]))


def _rate_text(rate: float) -> str:
    for per, unit in ((1.0, "s"), (60.0, "m"), (3600.0, "h")):
        if rate * per >= 1 - 1e-9 or unit == "h":
            return f"{rate * per:.6g}/{unit}"
    raise AssertionError("unreachable")


def _limit_text(lim: Limit | None) -> str:
    if lim is None:
        return "no outbound limit"
    parts = []
    if lim.rate is not None:
        parts.append(f"rate_limit {_rate_text(lim.rate)}, burst {_burst(lim):.6g}")
    parts.append("max_inflight " + ("unbounded" if lim.max_inflight is None else str(lim.max_inflight)))
    return ", ".join(parts)


def render_tree(plan: Plan, recipient: dict[str, Any] | None = None,
                failover_on: list[int | str] | None = None,
                limits: dict[str, Limit] | None = None) -> str:
    """The plan as an indented, numbered tree with every timeout and its source (and, given
    `limits`, each provider's outbound limit)."""
    lines: list[str] = []
    lines.append(f"route {plan.route}: {plan.method} ({_METHOD_TEXT.get(plan.method, plan.method)})")
    if plan.policy_version:
        lines.append(f"  policy version {plan.policy_version}")
    lines.append(f"  message timeout {_dur(plan.message_timeout_ms)}  "
                 f"({_label(plan.message_timeout_source)})")
    if failover_on is not None:
        lines.append("  fail over on " + ", ".join(str(e) for e in failover_on)
                     + "; any other outcome fails the channel")
    _render_items(plan.items, recipient, lines, indent="  ", limits=limits)
    return "\n".join(lines) + "\n"


def _render_items(items: tuple[Step, ...], recipient: dict[str, Any] | None,
                  lines: list[str], indent: str, limits: dict[str, Limit] | None) -> None:
    for i, step in enumerate(items, 1):
        head = f"{indent}{i}. "
        sub = indent + " " * len(f"{i}. ")
        if isinstance(step, GroupStep):
            lines.append(f"{head}group: {step.method} ({_METHOD_TEXT.get(step.method, step.method)})")
            _render_items(step.items, recipient, lines, sub, limits)
        else:
            _render_channel(step, head, sub, recipient, lines, limits)


def _render_channel(step: ChannelStep, head: str, sub: str,
                    recipient: dict[str, Any] | None, lines: list[str],
                    limits: dict[str, Limit] | None) -> None:
    text = f"{head}channel {step.channel}: {step.method}"
    if step.requires:
        text += f", requires to.{step.requires}"
        if recipient is not None and not recipient.get(step.requires):
            text += f"  -- SKIPPED: the recipient has no {step.requires}"
    lines.append(text)
    lines.append(f"{sub}timeout {_dur(step.timeout_ms)}  "
                 f"({_label(step.timeout_source)})")
    width = max(len(p.provider) for p in step.providers) if step.providers else 0
    for j, p in enumerate(step.providers, 1):
        lines.append(f"{sub}{j}. {p.provider:<{width}}  timeout {_dur(p.timeout_ms)}  "
                     f"({_label(p.timeout_source)})")
        lines.append(f"{sub}   {' ' * width}  {_provider_details(p)}")
        if limits is not None:
            lines.append(f"{sub}   {' ' * width}  {_limit_text(limits.get(p.provider))}")


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
        slow = "" if p.breaker_slow_ms is None else f", slow after {_dur(p.breaker_slow_ms)}"
        parts.append(f"breaker {p.breaker_failures} failures / {_dur(p.breaker_cooldown_ms)} cooldown{slow}")
    return ", ".join(parts)


def channel_contents(policy: Policy, plan: Plan, msg: MessageRequest) -> dict[str, tuple[Content, str]]:
    """What each channel the recipient can reach would receive, and where it came from
    ("templates.NAME.CHANNEL" or "content"); PlanError as POST /v1/send would answer 422."""
    rendered = render_message(policy, plan, msg) or {}
    out: dict[str, tuple[Content, str]] = {}
    for step in plan_channels(plan.items, msg.to):
        c = rendered.get(step.channel)
        if c is not None:
            out[step.channel] = (c, f"templates.{msg.template}.{step.channel}")
        else:
            out[step.channel] = (fallback(msg.content), "content.title / content.body")
    return out


def render_contents(contents: dict[str, tuple[Content, str]]) -> str:
    """The content block of `explain --message`: each channel's title, text and html."""
    lines = ["content each channel would receive:"]
    if not contents:
        lines.append("  (no channel: the recipient can reach none)")
    for channel, (c, source) in contents.items():
        lines.append(f"  {channel}  ({source})")
        for key, value in (("title", c.title), ("text", c.text), ("html", c.html)):
            if value is None:
                continue
            first, *rest = value.split("\n") or [""]
            lines.append(f"    {key + ':':<6} {first}")
            lines += [f"    {'':<6} {line}" for line in rest]
    return "\n".join(lines) + "\n"


def skipped_channels(items: tuple[Step, ...], recipient: dict[str, Any]) -> list[dict[str, str]]:
    """The channels the recipient cannot reach, as `explain --json` lists them (the text's
    "SKIPPED: the recipient has no FIELD"): [{"channel", "requires", "reason"}], in plan order."""
    out: list[dict[str, str]] = []
    for step in items:
        if isinstance(step, GroupStep):
            out += skipped_channels(step.items, recipient)
        elif step.requires and not recipient.get(step.requires):
            out.append({"channel": step.channel, "requires": step.requires,
                        "reason": f"the recipient has no {step.requires}"})
    return out
