"""POST /v1/receipts/{provider}: a provider's delivery receipt, HMAC-signed, or a vendor's own
webhook (daemon/receipts/) (docs/api.md "Receipts")."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.request import ReceiptStatus
from ..receipts import BadReceipt, BadSignature
from ..receipts.handler import handle as handle_vendor_receipt
from ..runtime import Overloaded
from .base import (SIGNATURE_HEADER, _ID_RE, ApiState, STATE_KEY, ApiError, json_response, validation_details,
                   _unavailable)
from .guard import _vendor_config, read_body, parse_json_object


class ReceiptBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    attempt_id: str
    status: ReceiptStatus


def signature_ok(secret: str, raw: bytes, header: str | None) -> bool:
    """Whether `header` is "sha256=<hex HMAC-SHA256 of raw>"; compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    given = header[len("sha256="):].strip().lower()
    if not given.isascii():         # compare_digest takes ASCII str only; not hex anyway
        return False
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode(), expected.encode())


def sign(secret: str, raw: bytes) -> str:
    """The header value a provider sends: "sha256=<hex HMAC-SHA256 of the raw body>"."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


async def receipt(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    provider = request.match_info["provider"]
    vendor = _vendor_config(state, request)
    if vendor is not None:
        return await vendor_receipt(request, state, provider, vendor)
    secret = state.router.receipt_secret(provider)
    if secret is None and provider not in state.router.policy.providers:
        raise ApiError(404, f"no provider {provider!r}", [{"loc": ["path", "provider"], "msg": "unknown provider"}])
    raw = await read_body(request, state.max_body, state.body_timeout_s)
    if secret is not None and not signature_ok(secret, raw, request.headers.get(SIGNATURE_HEADER)):
        raise ApiError(401, "bad or missing receipt signature",
                       [{"loc": ["header", SIGNATURE_HEADER],
                         "msg": "expected sha256=<hex HMAC-SHA256 of the raw body with the receipt_secret>"}])
    body = parse_json_object(raw)
    try:
        rb = ReceiptBody.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, "invalid receipt", validation_details(e)) from None
    try:
        known = bool(_ID_RE.fullmatch(rb.attempt_id)) and await state.router.receipt(provider, rb.attempt_id, rb.status)
    except Overloaded as e:
        raise _unavailable(e) from None
    if not known:
        raise ApiError(404, f"no attempt {rb.attempt_id!r} of provider {provider!r} awaits a receipt",
                       [{"loc": ["body", "attempt_id"], "msg": "unknown attempt"}])
    return json_response({"attempt_id": rb.attempt_id, "status": rb.status, "accepted": True})


async def vendor_receipt(request: web.Request, state: ApiState, provider: str, cfg: Any) -> web.Response:
    """A vendor's own webhook (ses, sendgrid, twilio): daemon/receipts/handler.py."""
    raw = await read_body(request, state.max_body)
    try:
        answer = await handle_vendor_receipt(state.router, provider, cfg, raw, request.headers, request.content_type)
    except BadSignature as e:
        raise ApiError(401, "bad or missing receipt signature",
                       [{"loc": [e.where], "msg": e.reason}]) from None
    except BadReceipt as e:
        if e.status == 503:
            raise ApiError(503, e.reason, headers={"Retry-After": "5"}) from None
        raise ApiError(400, "invalid receipt", [{"loc": ["body"], "msg": e.reason}]) from None
    except Overloaded as e:
        raise _unavailable(e) from None
    return json_response(answer)
