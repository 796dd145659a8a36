"""SendGrid Event Webhook batches (docs/providers.md "sendgrid").

SendGrid POSTs a JSON array of events. With the signed Event Webhook on, it signs each POST with
ECDSA (P-256, SHA-256) over the timestamp followed by the raw body: the base64 DER signature in
X-Twilio-Email-Event-Webhook-Signature, the timestamp (Unix seconds) in
X-Twilio-Email-Event-Webhook-Timestamp. The verification key is the one SendGrid shows in its
settings (`webhook_public_key`). A timestamp older than `receipt_max_age` is a replay.

An event finds its attempt by `routingd_attempt_id` (the custom_args routingd sends, which
SendGrid echoes as top-level fields) or else by its sg_message_id, whose part before the first
dot is the X-Message-Id SendGrid answered the send with.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.policy import load_ec_public_key
from . import BadReceipt, BadSignature, VendorState, clip

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# event -> the receipt it makes (None: an event only)
STATES: dict[str, Literal["delivered", "failed"] | None] = {
    "delivered": "delivered", "bounce": "failed", "dropped": "failed",
    "processed": None, "deferred": None, "open": None, "click": None, "spamreport": None,
    "unsubscribe": None, "group_unsubscribe": None, "group_resubscribe": None,
}
# SendGrid's field -> its key in the event (never `type` or `at`: the event's own keys)
_DETAIL_KEYS = {"reason": "reason", "status": "smtp_status", "type": "bounce_type", "response": "response",
                "attempt": "attempt", "bounce_classification": "bounce_classification"}


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    key: ec.EllipticCurvePublicKey = load_ec_public_key(text)
    return key


def verify(key: ec.EllipticCurvePublicKey, raw: bytes, signature: str | None, timestamp: str | None,
           now: float, max_age_s: float) -> None:
    """Raise BadSignature unless `signature` is SendGrid's over timestamp + raw, made within max_age_s."""
    if not signature or not timestamp:
        raise BadSignature(f"missing {SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER}")
    try:
        at = int(timestamp.strip())
    except ValueError:
        raise BadSignature(f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    if abs(now - at) > max_age_s:
        raise BadSignature(f"{TIMESTAMP_HEADER} is more than receipt_max_age away from now (a replay?)")
    try:
        sig = base64.b64decode(signature.strip(), validate=True)
        key.verify(sig, timestamp.strip().encode() + raw, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BadSignature(f"bad {SIGNATURE_HEADER} (ECDSA over the timestamp and the body, with "
                           "webhook_public_key)") from None


def parse(raw: bytes) -> list[VendorState]:
    try:
        events = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadReceipt("a SendGrid Event Webhook batch is a JSON array") from None
    if not isinstance(events, list):
        raise BadReceipt("a SendGrid Event Webhook batch is a JSON array")
    out: list[VendorState] = []
    for e in events:
        if not isinstance(e, dict) or not isinstance(e.get("event"), str):
            raise BadReceipt("each SendGrid event is an object with an `event` name")
        state = e["event"].strip().lower()
        aid = e.get("routingd_attempt_id")
        sg = e.get("sg_message_id")
        vendor_id = sg.split(".", 1)[0] if isinstance(sg, str) and sg else None
        if not isinstance(aid, str) or not aid:
            aid = None
        if aid is None and vendor_id is None:
            raise BadReceipt("a SendGrid event names its message (sg_message_id or routingd_attempt_id)")
        detail: dict[str, Any] = {name: clip(e[k]) for k, name in _DETAIL_KEYS.items() if e.get(k) not in (None, "")}
        if isinstance(e.get("sg_event_id"), str):
            detail["sg_event_id"] = clip(e["sg_event_id"], 100)
        out.append(VendorState(vendor_id, aid, state, STATES.get(state), detail))
    return out
