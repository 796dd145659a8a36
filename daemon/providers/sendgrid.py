"""Provider adapter of type `sendgrid`: SendGrid's v3 Mail Send API (docs/providers.md "sendgrid").

One POST `{base_url}/v3/mail/send` per attempt on the process's shared aiohttp session, with
`Authorization: Bearer <api_key>` and a JSON body: one personalization to `to.email`, `from`,
the subject and content from AttemptRequest.body() (text/plain first, text/html if there is
HTML), and routingd's message and attempt ids in `custom_args` (SendGrid's Event Webhook echoes
them, so receipts can find their attempt even without the X-Message-Id).

SendGrid's answers keep their HTTP status: 202 is delivered (its X-Message-Id header becomes
provider_message_id); 429 takes its retry hint from X-RateLimit-Reset (epoch seconds) or
Retry-After; 400/401/403/413 are permanent; 5xx transient. The detail quotes SendGrid's
errors[].message and field, with any URL cut to its host.
"""

from __future__ import annotations

import json
import time
from typing import Any


from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .email_common import clip, recipient, sender, vendor_text
from .http import bounded_request, parse_retry_after
from .redact import MAX_RAW


class SendgridAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.ctx = ctx
        self.url = f"{config.base_url}/v3/mail/send"
        self.headers = {"Authorization": f"Bearer {config.api_key.get_secret_value()}",
                        "Content-Type": "application/json", "Accept": "application/json"}
        from_name, from_addr = sender(config.from_)
        self.from_ = {"email": from_addr, "name": from_name} if from_name else {"email": from_addr}

    def body(self, req: AttemptRequest, to: str) -> dict[str, Any]:
        content = req.body()
        parts = [{"type": "text/plain", "value": content.text}]
        if content.html is not None:
            parts.append({"type": "text/html", "value": content.html})
        return {"personalizations": [{"to": [{"email": to}]}], "from": self.from_,
                "subject": content.title, "content": parts,
                "custom_args": {"routingd_message_id": req.message_id, "routingd_attempt_id": req.attempt_id}}

    async def send(self, req: AttemptRequest) -> Outcome:
        to = recipient(req)
        if isinstance(to, Outcome):
            return to
        session = self.ctx.http_session
        data = json.dumps(self.body(req, to), ensure_ascii=False).encode()
        answer = await bounded_request(session, "POST", self.url, deadline_s=req.deadline_s, data=data,
                                       headers=self.headers)
        if isinstance(answer, Outcome):
            return answer
        status, headers, raw = answer
        if 200 <= status < 300:
            return Outcome(status=status, provider_message_id=headers.get("X-Message-Id") or None)
        retry_after = None
        if status == 429:
            retry_after = _reset_in(headers.get("X-RateLimit-Reset"))
            if retry_after is None:
                retry_after = parse_retry_after(headers.get("Retry-After"))
        return Outcome(status=status, retry_after_s=retry_after, detail=f"SendGrid {status}: {_errors(raw)}")


def _reset_in(value: str | None) -> float | None:
    """X-RateLimit-Reset (the Unix time the window resets) as seconds from now."""
    try:
        reset = float(value) if value is not None else None
    except ValueError:
        return None
    if reset is None or reset != reset or reset in (float("inf"), float("-inf")):
        return None
    return max(0.0, reset - time.time())


def _errors(raw: bytes) -> str:
    """SendGrid's {"errors": [{"message", "field", "help"}]} as "message (field)" joined by "; "."""
    try:
        errors = json.loads(raw)["errors"]
        parts = []
        for e in errors[:5]:
            msg = str(e.get("message") or "").strip()
            field = e.get("field")
            parts.append(f"{msg} (field {field})" if field else msg)
        text = "; ".join(p for p in parts if p)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = clip(raw[:MAX_RAW].decode("utf-8", "replace"))
    return vendor_text(text) if text else "(no error text)"


register_adapter("sendgrid", SendgridAdapter)
