"""POST /v1/send and GET /v1/messages/{id} (docs/api.md)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ..core.plan import PlanError
from ..core.request import IDEMPOTENCY_KEY_RE, SendRequest
from ..openapi import MAX_JSON_DEPTH
from ..runtime import Overloaded, timeout_problems
from .base import (IDEMPOTENCY_HEADER, _ID_RE, _JSON_CONTENT_TYPE, ApiState, STATE_KEY, ApiError, _encode,
                   json_response, validation_details, _unavailable)
from .guard import read_body, parse_json_object


# --------------------------------------------------------------------------- handlers


def send_key(state: ApiState, request: web.Request) -> str | None:
    """A send's first checks (/v1 and Courier's /send): routingd is ready, the Idempotency-Key
    is well formed; the key (None without one)."""
    if state.phase != "ready":
        raise ApiError(503, f"routingd is {state.phase}; not accepting messages",
                       headers={"Retry-After": "5"})
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiError(400, "bad Idempotency-Key",
                       [{"loc": ["header", IDEMPOTENCY_HEADER], "msg": "1 to 255 printable ASCII characters"}])
    return key


def send_load_check(state: ApiState, request: web.Request) -> None:
    """A send's back-pressure before its body is read: a flood past the bound costs no parsing and
    holds no memory (the router checks again, atomically, before it stores anything)."""
    limit = _inflight_limit(state)
    if limit is not None and state.router.inflight >= limit:
        raise _unavailable(Overloaded(1.0))
    held_limit = _limit(state, "max_inflight_bytes")
    if held_limit is not None and request.content_length is not None and \
            request.content_length <= state.max_body and \
            state.router.inflight_bytes + request.content_length > held_limit:    # (too large: 413 first)
        # the same, in bytes, by the body's announced length (the router counts exactly)
        raise _unavailable(Overloaded(1.0, f"routingd holds {state.router.inflight_bytes} bytes of pending "
                                      f"requests; this one ({request.content_length} bytes) would pass "
                                      f"[daemon] max_inflight_bytes ({held_limit})"))


async def submit_send(state: ApiState, request: web.Request, key: str | None,
                      idempotency_ttl_s: float | None = None) -> Any:
    """A send's body read, validated and handed to the router: the router's SubmitResult, or the
    400/413/422/503 answer (/v1 and Courier's /send alike)."""
    raw = await read_body(request, state.max_body, state.body_timeout_s)
    req = _send_request_fast(raw)
    text: str | None = None
    if req is not None:
        try:
            text = raw.decode()     # stored as the request (it validated into req as it is)
        except UnicodeDecodeError:
            pass
    else:                           # the full path: the exact 400 or 422 answer
        body = parse_json_object(raw)
        try:
            req = SendRequest.model_validate(body)
        except ValidationError as e:
            raise ApiError(422, "invalid send request", validation_details(e)) from None
    too_long = timeout_problems(req.message)
    if too_long:
        raise ApiError(422, "invalid send request", [{"loc": list(p.loc), "msg": p.msg} for p in too_long])
    try:
        if idempotency_ttl_s is None:
            return await state.router.submit(req, idempotency_key=key, request_json=text)
        return await state.router.submit(req, idempotency_key=key, request_json=text,
                                         idempotency_ttl_s=idempotency_ttl_s)
    except PlanError as e:
        raise ApiError(422, "the request does not fit the routing policy",
                       [{"loc": list(p.loc), "msg": p.msg} for p in e.problems]) from None
    except Overloaded as e:
        raise _unavailable(e) from None


async def send(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    key = send_key(state, request)
    send_load_check(state, request)
    result = await submit_send(state, request, key)
    mid = result.message_id
    headers = {"Content-Type": _JSON_CONTENT_TYPE, "Location": "/v1/messages/" + mid}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    # = json_response({"message_id": mid}, status=202, headers=...), the body put together as
    # bytes (no dict to encode, no text to re-encode, no content type to parse)
    return web.Response(body=b'{"message_id":' + _encode(mid).encode() + b"}", status=202, headers=headers)


def _send_request_fast(raw: bytes) -> SendRequest | None:
    """pydantic's own JSON parser validating in one pass, for a body that is shallow enough to
    need no depth check; None (use the full path) for anything it does not take as it is -- the
    full path then gives the 400/422 answer, so errors read the same either way."""
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        return None
    try:
        return SendRequest.model_validate_json(raw)
    except ValidationError:
        return None


def _inflight_limit(state: ApiState) -> int | None:
    return _limit(state, "max_inflight")


def _limit(state: ApiState, name: str) -> int | None:
    router = state.router
    limits = getattr(router, "limits", None)
    if limits is None:
        limits = router.policy.model.daemon
    value = getattr(limits, name, None)
    return value if isinstance(value, int) else None


async def message_status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    mid = request.match_info["message_id"]
    status = state.router.status(mid) if _ID_RE.fullmatch(mid) else None
    if status is None:
        raise ApiError(404, f"no message {mid!r}", [{"loc": ["path", "message_id"], "msg": "unknown message"}])
    return json_response(status)
