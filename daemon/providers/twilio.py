"""Provider adapter of type `twilio`: an SMS through Twilio Programmable Messaging.

POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json, form-encoded, HTTP basic auth
(account_sid : auth_token), with To = to.phone_number, Body = the rendered text (the title when
there is no text), From or MessagingServiceSid, and StatusCallback when `status_callback` is set
(Twilio then posts the message's states there; see docs/providers.md "twilio").

Twilio answers 201 with the Message resource (its `sid` becomes provider_message_id) or an error
body {"code", "message", "more_info", "status"}; the Twilio code decides the outcome (table in
docs/providers.md "twilio"): 20429 throttled -> 429 with the Retry-After hint, invalid or
unreachable number -> 4xx (the channel fails), bad credentials -> 401, Twilio's 5xx -> 5xx.
"""

from __future__ import annotations

import base64
from typing import Any

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .vendor import VendorAnswer, accepted, vendor_request
from .redact import MAX_RAW

# Twilio error code -> the status routingd classifies (failover.on); codes not listed keep the
# HTTP status Twilio answered with.
TWILIO_CODES: dict[int, int] = {
    20429: 429,     # too many requests (REST API concurrency)
    14107: 429,     # SMS send rate limit exceeded
    20003: 401,     # authenticate: wrong account_sid / auth_token
    20005: 403,     # account not active
    21211: 400,     # invalid 'To' phone number
    21614: 400,     # 'To' number is not a valid mobile number (unreachable by SMS)
    21408: 403,     # permission to send to this region is not enabled
    21610: 403,     # the recipient replied STOP (unsubscribed)
    21612: 400,     # the 'To' number is not reachable via SMS from this 'From'
    21606: 400,     # the 'From' number is not a valid SMS-capable number of this account
    21602: 400,     # message body is required
}


class TwilioAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.ctx = ctx
        sid = config.account_sid
        self.url = f"{config.base_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        self._token = config.auth_token.get_secret_value()
        basic = base64.b64encode(f"{sid}:{self._token}".encode()).decode()
        self.headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        self.masked = (basic,)          # the header a vendor error may quote (masked by the runtime)
        self.sender = ({"From": config.from_} if config.from_ is not None
                       else {"MessagingServiceSid": config.messaging_service_sid})
        self.status_callback: str | None = config.status_callback

    def form(self, req: AttemptRequest) -> dict[str, str] | Outcome:
        """The form Twilio receives, or the 400 outcome when the message cannot make one."""
        to = req.to.get("phone_number")
        if not isinstance(to, str) or not to:
            return Outcome(status=400, detail="to.phone_number is missing (twilio sends to an E.164 number)")
        content = req.body()
        text = content.text or content.title
        if not text:
            return Outcome(status=400, detail="nothing to send: the rendered text and title are empty")
        form = {"To": to, "Body": text, **self.sender}
        if self.status_callback is not None:
            form["StatusCallback"] = self.status_callback
        return form

    async def send(self, req: AttemptRequest) -> Outcome:
        form = self.form(req)
        if isinstance(form, Outcome):
            return form
        answer = await vendor_request(self.ctx.http_session, "POST", self.url, deadline_s=req.deadline_s,
                                      secrets=(self._token,), data=form, headers=self.headers)
        if isinstance(answer, Outcome):
            return answer
        return outcome(answer)


def outcome(answer: VendorAnswer) -> Outcome:
    """Twilio's answer as an Outcome (docs/providers.md "twilio")."""
    body = answer.json()
    body = body if isinstance(body, dict) else {}
    if 200 <= answer.status < 300:
        return accepted(answer, "twilio", body.get("sid"), "a message sid")
    code = body.get("code")
    message = body.get("message") or answer.text()
    status = answer.status
    if isinstance(code, int) and code in TWILIO_CODES:
        status = TWILIO_CODES[code]
    what = f"twilio {code}" if isinstance(code, int) else f"twilio HTTP {answer.status}"
    return Outcome(status=status, retry_after_s=answer.retry_after_s,
                   detail=f"{what}: {message}"[:MAX_RAW] if message else what)


register_adapter("twilio", TwilioAdapter)
