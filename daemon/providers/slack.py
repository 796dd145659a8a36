"""Provider adapter of type `slack`: a chat message through an incoming webhook, or through the
Web API's chat.postMessage with a bot token.

webhook   POST webhook_url {"text": ...} (JSON). Slack answers 200 "ok", or an HTTP error whose
          body is a short code (400 invalid_payload / no_text, 403 invalid_token /
          action_prohibited, 404 channel_not_found / no_service, 410 channel_is_archived,
          429 with Retry-After, 500 rollup_error): the HTTP status is the outcome. A webhook posts
          to the channel it was made for, so a message's to.slack.channel is refused (400) rather
          than ignored.
token     POST {base_url}/chat.postMessage {"channel", "text"} with "Authorization: Bearer".
          The Web API answers HTTP 200 {"ok": false, "error": ...} for most errors; the error
          code decides (docs/providers.md "slack"): ratelimited -> 429 (Retry-After), channel /
          auth errors -> 4xx, internal_error / fatal_error -> 5xx. `ts` is provider_message_id.

A webhook URL is a credential (its path is the secret): details name its origin only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .vendor import VendorAnswer, secret_parts, vendor_request
from .redact import MAX_RAW

SLACK_API = "https://slack.com/api"

# chat.postMessage error -> the status routingd classifies. Errors not listed are the caller's
# (Slack's Web API documents them as such): 400.
SLACK_ERRORS: dict[str, int] = {
    "ratelimited": 429, "rate_limited": 429,
    "invalid_auth": 401, "not_authed": 401, "token_revoked": 401, "token_expired": 401,
    "account_inactive": 401, "no_permission": 403, "missing_scope": 403,
    "channel_not_found": 404, "not_in_channel": 403, "is_archived": 410,
    "internal_error": 500, "fatal_error": 500, "service_unavailable": 503, "request_timeout": 504,
    "team_added_to_org": 503,
}


class SlackAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.ctx = ctx
        self.secrets: list[str] = []   # masked in every detail (redact.py)
        self.webhook_url: str | None = None
        self.token: str | None = None
        self.channel: str | None = config.channel
        if config.webhook_url is not None:
            url = config.webhook_url.get_secret_value()
            self.secrets += secret_parts(url)
            if config.base_url is not None:      # the same path on another origin (a proxy, a test)
                base, parts = urlsplit(config.base_url), urlsplit(url)
                url = urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))
                self.secrets += secret_parts(url)
            self.webhook_url = url
        else:
            self.token = config.token.get_secret_value()
            self.secrets.append(self.token)
            self.api_url = f"{(config.base_url or SLACK_API).rstrip('/')}/chat.postMessage"

    async def send(self, req: AttemptRequest) -> Outcome:
        content = req.body()
        text = content.text or content.title
        if not text:
            return Outcome(status=400, detail="nothing to send: the rendered text and title are empty")
        target = req.to.get("slack")
        channel = target.get("channel") if isinstance(target, dict) else None
        if target is not None and (not isinstance(channel, str) or not channel):
            return Outcome(status=400, detail='to.slack must be {"channel": "<channel name or id>"}')
        if self.webhook_url is not None:
            if channel is not None:
                return Outcome(status=400, detail="to.slack.channel needs a provider with token + channel: "
                                                  "an incoming webhook posts to the channel it was made for")
            answer = await vendor_request(self.ctx.http_session, "POST", self.webhook_url, deadline_s=req.deadline_s,
                                          secrets=self.secrets, json={"text": text})
            return answer if isinstance(answer, Outcome) else webhook_outcome(answer)
        answer = await vendor_request(self.ctx.http_session, "POST", self.api_url, deadline_s=req.deadline_s,
                                      secrets=self.secrets, json={"channel": channel or self.channel, "text": text},
                                      headers={"Authorization": f"Bearer {self.token}"})
        return answer if isinstance(answer, Outcome) else api_outcome(answer)


def webhook_outcome(answer: VendorAnswer) -> Outcome:
    """An incoming webhook's answer: its HTTP status, with Slack's error code as the detail."""
    if 200 <= answer.status < 300:
        return Outcome(status=answer.status)
    text = answer.text()
    return Outcome(status=answer.status, retry_after_s=answer.retry_after_s,
                   detail=f"slack webhook HTTP {answer.status}" + (f": {text}" if text else ""))


def api_outcome(answer: VendorAnswer) -> Outcome:
    """chat.postMessage's answer (docs/providers.md "slack")."""
    body = answer.json()
    if not isinstance(body, dict):
        if answer.status == 200:
            return Outcome(status=502, detail=f"slack HTTP 200 without a JSON answer: {answer.text()}")
        return Outcome(status=answer.status, retry_after_s=answer.retry_after_s,
                       detail=f"slack HTTP {answer.status}: {answer.text()}")
    if body.get("ok") is True and 200 <= answer.status < 300:
        ts = body.get("ts")
        return Outcome(status=answer.status, provider_message_id=ts if isinstance(ts, str) and ts else None)
    error = body.get("error")
    error = error if isinstance(error, str) and error else "unknown_error"
    # an HTTP error status (429, a 5xx from Slack's edge) stands; an HTTP 200 is judged by the error
    status = answer.status if answer.status >= 400 else SLACK_ERRORS.get(error, 400)
    return Outcome(status=status, retry_after_s=answer.retry_after_s, detail=f"slack {error}"[:MAX_RAW])


register_adapter("slack", SlackAdapter)
