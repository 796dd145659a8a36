"""POST /v1/receipts/{provider} for the vendor types (docs/api.md "Receipts"): verify and parse
with the vendor's module, then record each state on its message (Router.vendor_event) and hand
the final ones to Router.receipt. The answer is given only once all of it is committed."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import aiohttp

from . import BadReceipt, BadSignature, VendorState, sendgrid, ses, twilio

log = logging.getLogger("routingd.receipts")

_FETCH_TIMEOUT_S = 10.0
_MAX_FETCH_BYTES = 64 * 1024


async def handle(router: Any, provider: str, cfg: Any, raw: bytes, headers: Mapping[str, str],
                 content_type: str) -> dict[str, Any]:
    """Raises BadSignature (401), BadReceipt (400 / 503) or the router's Overloaded."""
    now = time.time()
    kind = cfg.type
    if kind == "twilio":
        if content_type != "application/x-www-form-urlencoded":
            raise BadReceipt("a Twilio status callback is application/x-www-form-urlencoded")
        states = twilio.parse(raw, headers.get(twilio.SIGNATURE_HEADER), cfg.status_callback,
                              cfg.auth_token.get_secret_value())
    elif kind == "sendgrid":
        if cfg.webhook_public_key is None:
            raise BadSignature("the provider has no webhook_public_key: routingd cannot check SendGrid's "
                               "signature (turn on the signed Event Webhook and set the key)", "config")
        sendgrid.verify(sendgrid.load_public_key(cfg.webhook_public_key), raw,
                        headers.get(sendgrid.SIGNATURE_HEADER), headers.get(sendgrid.TIMESTAMP_HEADER),
                        now, cfg.receipt_max_age / 1000.0)
        states = sendgrid.parse(raw)
    elif kind == "ses":
        hosts = ses.allowed_hosts(cfg.region, cfg.sns_hosts)
        fetch = _fetcher(router)
        doc = await ses.verify(raw, hosts, now, cfg.receipt_max_age / 1000.0, fetch)
        if doc["Type"] == "SubscriptionConfirmation":
            try:
                await ses.confirm(doc, hosts, fetch)
            except BadSignature:
                raise
            except Exception as e:  # noqa: BLE001 - SNS resends the confirmation on a non-2xx
                log.warning("confirming the SNS subscription failed: %s", e)
                raise BadReceipt("could not confirm the SNS subscription (SubscribeURL); the daemon log says why",
                                 503) from None
            return {"accepted": True, "subscription": "confirmed"}
        if doc["Type"] == "UnsubscribeConfirmation":
            log.warning("SNS reports the subscription of provider %s ended (%s)", provider, doc.get("TopicArn"))
            return {"accepted": True, "subscription": "ended"}
        states = ses.events(doc)
    else:
        raise BadReceipt(f"provider type {kind!r} has no vendor receipts")
    matched = unmatched = 0
    for s in states:
        if await _apply(router, provider, s):
            matched += 1
        else:
            unmatched += 1
    await router.settle()
    return {"accepted": True, "events": len(states), "matched": matched, "unmatched": unmatched}


async def _apply(router: Any, provider: str, s: VendorState) -> bool:
    """One vendor state: its event recorded, and a final one applied as a receipt. False when no
    attempt matches (counted in routingd_receipts_unmatched_total; the vendor still gets a 2xx)."""
    aid = s.attempt_id
    if aid is None and s.vendor_id is not None:
        aid = router.find_attempt(provider, s.vendor_id)
    if aid is None or not router.vendor_event(provider, aid, s.state, s.detail):
        router.metrics.receipts_unmatched.inc()
        return False
    if s.final is not None:
        return bool(await router.receipt(provider, aid, s.final))
    return True


def _fetcher(router: Any) -> ses.Fetch:
    async def fetch(url: str) -> bytes:
        session = router.http_session
        if session is None:
            raise RuntimeError("no HTTP client session (the runtime has not started)")
        async with session.get(url, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_S)) as resp:
            body = await resp.content.read(_MAX_FETCH_BYTES + 1)
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status} from {url.split('?')[0]}")
            return bytes(body)
    return fetch
