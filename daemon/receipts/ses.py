"""SES event notifications through Amazon SNS (docs/providers.md "ses").

SNS POSTs a JSON document (Content-Type text/plain) of Type SubscriptionConfirmation,
Notification or UnsubscribeConfirmation, signed with RSA: the base64 Signature over a
"Name\\nvalue\\n" string of fixed fields (below), SHA1 for SignatureVersion 1 and SHA256 for 2,
verifiable with the public key of the X.509 certificate at SigningCertURL. That URL is fetched
only over https (http only on a loopback address, for tests) from an allowed host
(`sns_hosts`; default sns.<region>.amazonaws.com), and the key is cached per URL. A
SubscriptionConfirmation, once verified, is confirmed by fetching its SubscribeURL (same host
rule). A Notification older than `receipt_max_age` is a replay.

A Notification's Message is the SES event (configuration-set event publishing: `eventType`;
identity notifications: `notificationType`): its mail.messageId is the MessageId SES answered
the send with, the attempt's provider_message_id.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
from collections import OrderedDict
from datetime import datetime
from typing import Any, Awaitable, Callable, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import BadReceipt, BadSignature, VendorState, clip

log = logging.getLogger("routingd.receipts.ses")

Fetch = Callable[[str], Awaitable[bytes]]       # GET a URL, the body of a 2xx (raises otherwise)

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CERTS: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()     # SigningCertURL -> its key
_MAX_CERTS = 32
_MAX_CERT_BYTES = 64 * 1024


def allowed_hosts(region: str, sns_hosts: list[str] | None) -> frozenset[str]:
    return frozenset(h.lower() for h in sns_hosts) if sns_hosts else frozenset({f"sns.{region}.amazonaws.com"})


def url_allowed(url: str, hosts: frozenset[str]) -> bool:
    """https on an allowed host (host or host:port as listed), or http on an allowed loopback one."""
    try:
        u = urlsplit(url)
        host = (u.hostname or "").lower()
        netloc = host if u.port is None else f"{host}:{u.port}"
    except ValueError:
        return False
    if u.username or u.password or not host or (host not in hosts and netloc not in hosts):
        return False
    if u.scheme == "https":
        return True
    try:
        return u.scheme == "http" and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def string_to_sign(doc: dict[str, Any]) -> bytes:
    fields = _SIGNED_FIELDS[doc["Type"]]
    return "".join(f"{k}\n{doc[k]}\n" for k in fields if k in doc).encode()


def parse_time(value: Any) -> float:
    """SNS's Timestamp, like 2012-04-25T21:49:25.719Z, as Unix seconds."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadSignature("Timestamp is not an ISO 8601 time", "body") from None


async def _public_key(url: str, fetch: Fetch) -> rsa.RSAPublicKey:
    key = _CERTS.get(url)
    if key is not None:
        _CERTS.move_to_end(url)
        return key
    try:
        pem = await fetch(url)
        if len(pem) > _MAX_CERT_BYTES:
            raise ValueError("certificate too large")
        cert_key = x509.load_pem_x509_certificate(pem).public_key()
    except BadSignature:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to get the key: the message cannot be checked
        log.warning("could not load the SNS signing certificate %s: %s", url, e)
        raise BadSignature("the SigningCertURL certificate could not be loaded", "body") from None
    if not isinstance(cert_key, rsa.RSAPublicKey):
        raise BadSignature("the SigningCertURL certificate has no RSA key", "body")
    _CERTS[url] = cert_key
    while len(_CERTS) > _MAX_CERTS:
        _CERTS.popitem(last=False)
    return cert_key


async def verify(raw: bytes, hosts: frozenset[str], now: float, max_age_s: float, fetch: Fetch
                 ) -> dict[str, Any]:
    """The SNS document of `raw` once its signature checks out; BadSignature otherwise."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadSignature("the body is not an SNS message (JSON)", "body") from None
    if not isinstance(doc, dict) or doc.get("Type") not in _SIGNED_FIELDS:
        raise BadSignature("the body is not an SNS message (Type)", "body")
    if any(not isinstance(doc.get(k, ""), str) for k in _SIGNED_FIELDS[doc["Type"]]):
        raise BadSignature("an SNS message's signed fields are strings", "body")
    version = doc.get("SignatureVersion")
    if version not in _HASHES:
        raise BadSignature(f"unknown SignatureVersion {clip(version, 20)!r} (1 and 2 are known)", "body")
    cert_url = doc.get("SigningCertURL")
    if not isinstance(cert_url, str) or not url_allowed(cert_url, hosts) or not cert_url.endswith(".pem"):
        raise BadSignature("SigningCertURL is not a .pem on an allowed SNS host (sns_hosts)", "body")
    if abs(now - parse_time(doc.get("Timestamp"))) > max_age_s:
        raise BadSignature("Timestamp is more than receipt_max_age away from now (a replay?)", "body")
    try:
        sig = base64.b64decode(str(doc.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("Signature is not base64", "body") from None
    key = await _public_key(cert_url, fetch)
    try:
        key.verify(sig, string_to_sign(doc), padding.PKCS1v15(), _HASHES[version]())
    except InvalidSignature:
        raise BadSignature("bad SNS Signature", "body") from None
    return doc


async def confirm(doc: dict[str, Any], hosts: frozenset[str], fetch: Fetch) -> None:
    """Confirm a verified SubscriptionConfirmation by fetching its SubscribeURL."""
    url = doc.get("SubscribeURL")
    if not isinstance(url, str) or not url_allowed(url, hosts):
        raise BadSignature("SubscribeURL is not on an allowed SNS host (sns_hosts)", "body")
    await fetch(url)
    log.info("confirmed the SNS subscription to %s", clip(doc.get("TopicArn", ""), 200))


# SES event -> the receipt it makes (None: an event only); Bounce depends on its bounceType.
STATES: dict[str, Literal["delivered", "failed"] | None] = {
    "delivery": "delivered", "reject": "failed", "rendering failure": "failed",
    "send": None, "deliverydelay": None, "complaint": None, "open": None, "click": None, "subscription": None,
}


def _obj(ev: dict[str, Any], key: str) -> dict[str, Any]:
    v = ev.get(key)
    return v if isinstance(v, dict) else {}


def events(doc: dict[str, Any]) -> list[VendorState]:
    """The SES event a verified Notification carries."""
    try:
        ev = json.loads(doc.get("Message", ""))
    except (ValueError, TypeError):
        raise BadReceipt("the SNS Message is not an SES event (JSON)") from None
    if not isinstance(ev, dict):
        raise BadReceipt("the SNS Message is not an SES event (an object)")
    kind = ev.get("eventType") or ev.get("notificationType")
    mail = ev.get("mail")
    mid = mail.get("messageId") if isinstance(mail, dict) else None
    if not isinstance(kind, str) or not isinstance(mid, str) or not mid:
        raise BadReceipt("an SES event has eventType (or notificationType) and mail.messageId")
    state = kind.strip().lower()
    final = STATES.get(state)
    detail: dict[str, Any] = {}
    if state == "bounce":
        b = _obj(ev, "bounce")
        btype = str(b.get("bounceType", ""))
        final = "failed" if btype == "Permanent" else None      # Transient, Undetermined: SES retries
        detail = {"bounce_type": clip(btype, 40), "bounce_subtype": clip(b.get("bounceSubType", ""), 40)}
        recips = b.get("bouncedRecipients")
        if isinstance(recips, list) and recips and isinstance(recips[0], dict):
            detail["diagnostic"] = clip(recips[0].get("diagnosticCode") or recips[0].get("status") or "")
    elif state == "complaint":
        c = _obj(ev, "complaint")
        detail = {"complaint_type": clip(c.get("complaintFeedbackType", ""), 60)}
    elif state == "reject":
        r = _obj(ev, "reject")
        detail = {"reason": clip(r.get("reason", ""))}
    elif state == "deliverydelay":
        d = _obj(ev, "deliveryDelay")
        detail = {"delay_type": clip(d.get("delayType", ""), 60)}
    elif state == "delivery":
        d = _obj(ev, "delivery")
        if d.get("smtpResponse"):
            detail = {"smtp_response": clip(d["smtpResponse"])}
    return [VendorState(mid, None, state, final, {k: v for k, v in detail.items() if v})]
