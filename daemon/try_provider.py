"""`routingd try PROVIDER --to email=a@example.com ...`: one real message through one provider.

The first thing an operator runs after pasting credentials: no store, no routing, no retries.
It loads the config (secrets included, as `serve` does), builds that provider's adapter, sends
one AttemptRequest (rendered from --template/--data like a message at accept, else from
--title/--body), waits at most the provider's timeout, and prints what the vendor answered and
the outcome routingd derives from it per `failover.on` (docs/providers.md "Trying a provider").
Exit 0 when it was delivered (or accepted, for confirm = "receipt"), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from .errors import RoutingdError

if TYPE_CHECKING:       # imported when run: `routingd --help` builds this parser without them
    from .adapters import AttemptRequest
    from .core.engine import Outcome
    from .core.plan import FailoverRule
    from .core.policy import Policy

EXIT_DELIVERED = 0
EXIT_NOT_DELIVERED = 1


class TryError(RoutingdError):
    """The command cannot run as asked; the message is one line for stderr."""


def add_try_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("provider", metavar="PROVIDER", help="a provider name from [providers]")
    p.add_argument("--to", action="append", default=[], metavar="FIELD=VALUE", required=True,
                   help="a recipient field (Courier's names: email, phone_number, firebaseToken, "
                        "slack, user_id); repeat for more. A value starting with { or [ is JSON")
    p.add_argument("--template", metavar="NAME", help="render [templates.NAME] for the channel")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="a template variable (message.data); repeat for more. A value starting "
                        "with { or [ is JSON")
    p.add_argument("--title", help="content.title (used when no --template, or its channel has no part)")
    p.add_argument("--body", help="content.body (as --title)")
    p.add_argument("--channel", metavar="NAME",
                   help="the channel to send as (default: the first channel that lists PROVIDER)")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="routing.toml (default: $ROUTINGD_CONFIG or ./routing.toml)")


def parse_pairs(items: list[str], option: str) -> dict[str, Any]:
    """FIELD=VALUE options as a dict; a value starting with { or [ is parsed as JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TryError(f"{option} {item!r}: expected KEY=VALUE")
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as e:
                raise TryError(f"{option} {key}: not valid JSON: {e.msg}") from None
        else:
            out[key] = value
    return out


def provider_timeout_ms(policy: Policy, provider: str) -> int:
    """The provider's own timeout, else [timeouts] provider, else the built-in one (a route's
    timeouts do not apply: try uses no route)."""
    from .core.policy import BUILTIN_PROVIDER_TIMEOUT_MS

    own = policy.providers[provider].timeout
    if own is not None:
        return int(own)
    default = policy.model.timeouts.provider
    return int(default) if default is not None else BUILTIN_PROVIDER_TIMEOUT_MS


def derive(outcome: Outcome, rule: FailoverRule, confirm: str, timed_out: bool = False) -> tuple[bool, str]:
    """(delivered?, what routingd makes of the answer) -- the engine's classification
    (daemon/core/outcomes.py handle_outcome) in words."""
    if timed_out or outcome.network or outcome.status is None:
        what, retry = ("no answer within the timeout", rule.timeout) if timed_out else ("network failure", rule.network)
        return False, (f"{what}: retryable -> retry or fail over to the channel's next provider" if retry
                       else f"{what}, not in failover.on: permanent -> the channel fails")
    if 200 <= outcome.status < 300:
        if confirm == "receipt":
            return True, ("accepted: confirm = \"receipt\", so routingd would wait for the vendor's "
                          "delivery receipt at /v1/receipts")
        return True, "delivered"
    if rule.status_retryable(outcome.status):
        hint = "" if outcome.retry_after_s is None else f" (retry after {outcome.retry_after_s:g}s)"
        return False, f"status {outcome.status}: retryable -> retry or fail over to the channel's next provider{hint}"
    return False, f"status {outcome.status}, not in failover.on: permanent -> the channel fails (no provider failover)"


def build_request(policy: Policy, provider: str, args: argparse.Namespace) -> AttemptRequest:
    from .adapters import AttemptRequest
    from .content import render_channel
    from .core.plan import PlanError

    if provider not in policy.providers:
        names = ", ".join(sorted(policy.providers)) or "none"
        raise TryError(f"unknown provider {provider!r}; defined providers: {names}")
    channel = args.channel
    if channel is None:
        channel = next((c for c, ch in policy.channels.items() if provider in ch.providers), provider)
    elif channel not in policy.channels:
        raise TryError(f"--channel: unknown channel {channel!r}; defined channels: "
                       f"{', '.join(sorted(policy.channels)) or 'none'}")
    to = parse_pairs(args.to, "--to")
    data = parse_pairs(args.data, "--data")
    if data and args.template is None:
        raise TryError("--data needs --template (the data fills the template's variables)")
    content: dict[str, Any] = {}
    if args.title is not None:
        content["title"] = args.title
    if args.body is not None:
        content["body"] = args.body
    rendered = None
    if args.template is not None:
        try:
            rendered = render_channel(policy, args.template, channel, data, to, content)
        except PlanError as e:
            raise TryError("; ".join(f"{p.key_path}: {p.msg}" for p in e.problems)) from None
    message_id = "try-" + uuid.uuid4().hex[:16]
    return AttemptRequest(message_id=message_id, attempt_id=message_id + "-1", channel=channel,
                          provider=provider, try_no=1,
                          deadline_s=provider_timeout_ms(policy, provider) / 1000.0,
                          idempotency_key=f"{message_id}:{channel}:{provider}", to=to, content=content,
                          metadata={"routingd_try": True}, rendered=rendered)


async def send_once(policy: Policy, req: AttemptRequest) -> tuple[Outcome, float, bool]:
    """Build the provider's adapter and send `req` once, bounded by its timeout: (outcome,
    seconds, timed out?)."""
    from . import providers  # noqa: F401 - registers every provider type
    from .adapters import AdapterContext, build_adapter
    from .core.engine import Outcome
    from .providers.http import make_http_session

    cfg = policy.providers[req.provider]
    session = make_http_session(limit=4)
    ctx = AdapterContext(http_session=session)
    try:
        try:
            adapter = build_adapter(req.provider, cfg, ctx)
        except LookupError as e:
            raise TryError(str(e)) from None
        start = time.monotonic()
        timed_out = False
        try:
            try:
                outcome = await asyncio.wait_for(adapter.send(req), timeout=req.deadline_s)
            except asyncio.TimeoutError:
                timed_out = True
                outcome = Outcome(detail=f"no answer within {req.deadline_s:g}s (the provider's timeout)")
            except Exception as e:  # noqa: BLE001 - an adapter bug is a failed attempt, as in the daemon
                outcome = Outcome(network=True, detail=f"adapter error: {type(e).__name__}: {e}")
            return outcome, time.monotonic() - start, timed_out
        finally:
            await adapter.close()
    finally:
        await session.close()


def report(policy: Policy, req: AttemptRequest, outcome: Outcome, took_s: float,
           timed_out: bool = False) -> tuple[bool, list[str]]:
    from .core.plan import FailoverRule

    cfg = policy.providers[req.provider]
    rule = FailoverRule.from_entries(list(policy.model.failover.on))
    delivered, verdict = derive(outcome, rule, cfg.confirm, timed_out)
    to = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in req.to.items())
    c = req.body()
    lines = [f"provider {req.provider} (type {cfg.type}), channel {req.channel}, to {to}",
             f"sent: title {c.title!r}, text {c.text!r}" + ("" if c.html is None else f", html {c.html!r}"),
             f"vendor answered in {took_s * 1000:.0f} ms:",
             f"  status               {outcome.status if outcome.status is not None else '-'}"
             + ("  (network)" if outcome.network else ""),
             f"  detail               {outcome.detail or '-'}",
             f"  provider_message_id  {outcome.provider_message_id or '-'}"]
    if outcome.retry_after_s is not None:
        lines.append(f"  retry after          {outcome.retry_after_s:g}s")
    lines.append(f"routingd: {verdict}")
    return delivered, lines


def try_command(args: argparse.Namespace, policy: Policy) -> int:
    try:
        req = build_request(policy, args.provider, args)
        cfg = policy.providers[req.provider]
        if cfg.type == "mqtt":
            raise TryError(f"provider {req.provider!r} is of type mqtt: it publishes on the daemon's MQTT "
                           "connection; watch the topic while the daemon sends a message instead")
        outcome, took, timed_out = asyncio.run(send_once(policy, req))
    except TryError as e:
        print(f"routingd try: {e}", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    delivered, lines = report(policy, req, outcome, took, timed_out)
    print("\n".join(lines))
    return EXIT_DELIVERED if delivered else EXIT_NOT_DELIVERED
