"""Twilio status callbacks (docs/providers.md "twilio").

Twilio POSTs application/x-www-form-urlencoded parameters (MessageSid, MessageStatus, ErrorCode,
...) to the StatusCallback URL the message was sent with, signed in X-Twilio-Signature: base64 of
HMAC-SHA1, keyed by the account's auth token, over the full callback URL followed by every POST
parameter's name and value, sorted by name. The URL signed is the provider's `status_callback`
(what Twilio was told), not what the request line says (a proxy may rewrite it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal
from urllib.parse import parse_qsl

from . import BadReceipt, BadSignature, VendorState, clip

SIGNATURE_HEADER = "X-Twilio-Signature"

# MessageStatus -> the receipt it makes (None: an event only). `read` (WhatsApp) implies delivered;
# `canceled` (a scheduled message) never goes out.
STATES: dict[str, Literal["delivered", "failed"] | None] = {
    "delivered": "delivered", "read": "delivered",
    "undelivered": "failed", "failed": "failed", "canceled": "failed",
    "accepted": None, "scheduled": None, "queued": None, "sending": None, "sent": None,
    "receiving": None, "received": None, "partially_delivered": None,
}


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature for a POST of `params` to `url`."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def parse(raw: bytes, header: str | None, url: str | None, auth_token: str) -> list[VendorState]:
    if url is None:
        raise BadSignature("the provider has no status_callback: Twilio signs its callbacks over that URL, "
                           "so routingd cannot check them (set status_callback)", "config")
    try:
        params = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        params = None
    if not header or params is None:
        raise BadSignature(f"missing {SIGNATURE_HEADER}" if not header else "the body is not form-encoded")
    expected = signature(auth_token, url, params)
    if not header.isascii() or not hmac.compare_digest(expected, header.strip()):
        raise BadSignature(f"bad {SIGNATURE_HEADER} (HMAC-SHA1 with the auth_token over status_callback "
                           "and the sorted parameters)")
    form = dict(params)
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = form.get("MessageStatus") or form.get("SmsStatus")
    if not sid or not status:
        raise BadReceipt("a Twilio status callback has MessageSid and MessageStatus")
    state = status.strip().lower()
    detail = {}
    if form.get("ErrorCode"):
        detail["error_code"] = clip(form["ErrorCode"], 20)
    if form.get("ErrorMessage"):
        detail["error_message"] = clip(form["ErrorMessage"])
    return [VendorState(sid, None, state, STATES.get(state), detail)]
