"""What each channel of a message delivers: its template rendered per channel at accept
(docs/providers.md "Content").

A message that names a template is rendered for every channel of its plan the recipient can
reach, before it is stored: an unknown template or a missing variable is a 422 (PlanError) then,
never a failure at send time. Rendering is deterministic, so nothing rendered is stored: a
resumed message is rendered again from its stored request and policy version.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from .adapters import Content
from .core.plan import ChannelStep, Plan, PlanError, Step
from .core.policy import Policy, Problem
from .core.request import MessageRequest


def plan_channels(items: tuple[Step, ...], to: Mapping[str, Any] | None = None) -> Iterator[ChannelStep]:
    """The plan's channel steps in order, each channel once; with `to`, only those the
    recipient can reach (the engine skips a channel whose `requires` field it lacks)."""
    seen: set[str] = set()
    stack = [iter(items)]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        elif isinstance(step, ChannelStep):
            if step.channel not in seen and (to is None or not step.requires or to.get(step.requires)):
                seen.add(step.channel)
                yield step
        else:
            stack.append(iter(step.items))


def unreachable(plan: Any, to: Mapping[str, Any], *, profiled: bool) -> str | None:
    """Why no channel of the plan can reach the recipient (every one `requires` a field it lacks),
    or None when one can: such a send can never be delivered, so it is refused 422, not accepted
    to end `undeliverable` with no attempt (docs/api.md "POST /v1/send").

    profiled: `to` was filled from the stored profile of its to.user_id (daemon/profiles.py
    merge_profile); a to.user_id without one is told how to store it (docs/api.md "Profiles")."""
    if next(plan_channels(plan.items, to), None) is not None:
        return None
    needs = [f"{s.channel} needs to.{s.requires}" for s in plan_channels(plan.items) if s.requires]
    has = sorted(k for k, v in to.items() if v)
    why = (f"no channel of route {plan.route!r} can reach this recipient: {', '.join(needs) or 'no channel'}; "
           f"the recipient has {', '.join('to.' + k for k in has) or 'no field set'}")
    if not profiled and "user_id" in to:
        why += " (no profile is stored for this user_id: PUT /profiles/{user_id})"
    return why


def render_channel(policy: Policy, template: str, channel: str, data: Mapping[str, Any] | None,
                   to: Mapping[str, Any], content: Mapping[str, Any]) -> Content | None:
    """Template `template`'s part for `channel` (None: it has none, and content.title / content.body
    fill the channel); PlanError naming the location when it cannot be rendered."""
    templates = policy.templates
    if template not in templates:
        raise _unknown(policy, template)
    rendered, issues = templates.render(template, channel, data, to)
    if issues:
        raise PlanError([Problem(loc, msg) for loc, msg in issues])
    if rendered is None:
        if not content.get("title") and not content.get("body"):
            raise PlanError([Problem(("message", "template"), f"template {template!r} has no part for channel "
                                     f"{channel!r}, and message.content has no title or body to fill it")])
        return None
    return Content(rendered.title, rendered.text, rendered.html)


def render_message(policy: Policy, plan: Plan, msg: MessageRequest) -> dict[str, Content] | None:
    """{channel: Content} for every reachable channel of the plan that the message's template
    covers (None: the message names no template); PlanError with every problem found."""
    if msg.template is None:
        return None
    if msg.template not in policy.templates:
        raise _unknown(policy, msg.template)
    out: dict[str, Content] = {}
    problems: list[Problem] = []
    for step in plan_channels(plan.items, msg.to):
        try:
            rendered = render_channel(policy, msg.template, step.channel, msg.data, msg.to, msg.content)
        except PlanError as e:
            problems += e.problems
            continue
        if rendered is not None:
            out[step.channel] = rendered
    if problems:
        raise PlanError(_unique(problems))
    return out


def fallback(content: Mapping[str, Any]) -> Content:
    """A channel's content without a template: content.title / content.body (AttemptRequest.body())."""
    title, body = content.get("title"), content.get("body")
    return Content("" if title is None else str(title), "" if body is None else str(body))


def _unknown(policy: Policy, template: str) -> PlanError:
    names = policy.templates.names
    return PlanError([Problem(("message", "template"), f"unknown template {template!r}"
                              + (f"; defined templates: {', '.join(names)}" if names
                                 else "; routing.toml defines no [templates]"))])


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    out = []
    for p in problems:
        if (p.loc, p.msg) not in seen:
            seen.add((p.loc, p.msg))
            out.append(p)
    return out
