"""Courier's paths beside /v1, so an application on Courier's SDK switches by its base URL.

POST /send, GET /messages, GET /messages/{id}, GET /messages/{id}/history,
POST /messages/{id}/cancel (and POST /v1/messages/{id}/cancel), and the Profiles API
(PUT/POST/GET/DELETE /profiles/{user_id}). The same middleware guards them as /v1 (tokens,
browser checks, body limit, error bodies); a send is the /v1 send with Courier's answer
{"requestId"}. docs/api.md "Courier-compatible API" has the mapping of statuses;
docs/courier.md the fields refused and what else differs from Courier.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from .api import (STATE_KEY, ApiError, ApiState, _unavailable, json_content_type_check, json_response,
                  parse_json_object, read_body, send_key, send_load_check, submit_send)
from .profiles import profiles_of
from .runtime import Overloaded

EXPIRATION_HEADER = "x-idempotency-expiration"
_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_USER_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
MAX_PAGE = 100          # messages per page of GET /messages

# routingd's final statuses in Courier's words
COURIER_STATUS = {"delivered": "DELIVERED", "undeliverable": "UNDELIVERABLE", "expired": "UNDELIVERABLE",
                  "cancelled": "CANCELED"}
# routingd events in Courier's history words (others keep routingd's name, upper-cased)
COURIER_EVENT = {"started": "ENQUEUED", "attempt_started": "ROUTED", "attempt_accepted": "SENT",
                 "delivered": "DELIVERED", "channel_skipped": "UNROUTABLE"}


def _ms(stamp: Any) -> int | None:
    """An RFC 3339 time of the /v1 status as epoch milliseconds (Courier's times)."""
    if not isinstance(stamp, str):
        return None
    return int(round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000))


def _recipient(request_json: str | None) -> tuple[str, str, str]:
    """(recipient, event, notification) of a stored request, as Courier names them."""
    try:
        msg = json.loads(request_json or "{}").get("message", {})
    except ValueError:
        msg = {}
    to = msg.get("to") if isinstance(msg.get("to"), dict) else {}
    recipient = next((str(to[k]) for k in ("user_id", "email", "phone_number") if to.get(k) is not None), "")
    meta = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}
    template = str(msg.get("template") or "")
    return recipient, str(meta.get("event") or template), template


def courier_status(status: dict[str, Any]) -> str:
    """pending is ENQUEUED until a provider accepted an attempt (2xx awaiting its receipt): SENT."""
    if status["status"] != "pending":
        return COURIER_STATUS.get(status["status"], "UNDELIVERABLE")
    accepted = any(a["outcome"] is None and a.get("ended_at") is not None for a in status["attempts"])
    return "SENT" if accepted else "ENQUEUED"


def message_details(status: dict[str, Any], request_json: str | None) -> dict[str, Any]:
    """Courier's message details (GET /messages/{id}) from the /v1 status of a message."""
    recipient, event, notification = _recipient(request_json)
    attempts = status["attempts"]
    out: dict[str, Any] = {"id": status["message_id"], "status": courier_status(status),
                           "enqueued": _ms(status["accepted_at"]), "recipient": recipient, "event": event,
                           "notification": notification}
    sent = [t for t in (_ms(a["started_at"]) for a in attempts) if t is not None]
    if sent:
        out["sent"] = min(sent)
    if status.get("delivered_at"):
        out["delivered"] = _ms(status["delivered_at"])
    final = status["status"]
    if final in ("undeliverable", "expired"):
        out["reason"] = "PROVIDER_ERROR" if attempts else "NO_CHANNELS"
        last = attempts[-1] if attempts else None
        out["error"] = "the message deadline passed" if final == "expired" else \
            (last.get("detail") or f"{last['provider']}: {last['outcome']}") if last else \
            "no channel of the route could reach the recipient"
    out["providers"] = [{"channel": {"key": a["channel"]}, "provider": a["provider"],
                         "status": _attempt_status(a), "sent": _ms(a["started_at"]),
                         **({"delivered": _ms(a["ended_at"])} if a["outcome"] == "delivered" else {}),
                         **({"error": a.get("detail") or a["outcome"]}
                            if a["outcome"] not in (None, "delivered") else {}),
                         "attempt_id": a["attempt_id"]} for a in attempts]
    return out


def _attempt_status(a: dict[str, Any]) -> str:
    outcome = a["outcome"]
    if outcome == "delivered":
        return "DELIVERED"
    if outcome == "cancelled":
        return "CANCELED"
    if outcome is None:
        return "SENT" if a.get("ended_at") is not None else "ENQUEUED"
    return "UNDELIVERABLE"


def history(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's events in Courier's shape: {"type", "ts" (epoch ms), ...their data}."""
    out = []
    for e in status["events"]:
        data = {k: v for k, v in e.items() if k not in ("type", "at")}
        kind = COURIER_EVENT.get(e["type"], e["type"].upper())
        if e["type"] == "finished":
            kind = COURIER_STATUS.get(str(e.get("status")), "UNDELIVERABLE")
        if "channel" in data and isinstance(data["channel"], str):
            data["channel"] = {"key": data["channel"]}
        if "provider" in data:
            data["integration"] = data["provider"]
        out.append({"type": kind, "ts": _ms(e["at"]), "routingd_event": e["type"], **data})
    return out


# --------------------------------------------------------------------------- handlers


def _status_or_404(state: ApiState, mid: str) -> dict[str, Any]:
    status = state.router.status(mid) if _ID_RE.fullmatch(mid) else None
    if status is None:
        raise ApiError(404, f"no message {mid!r}", [{"loc": ["path", "message_id"], "msg": "unknown message"}])
    return status


def _expiration_ttl(state: ApiState, request: web.Request) -> float | None:
    """Courier's x-idempotency-expiration (epoch seconds or milliseconds, or an ISO 8601 time) as
    seconds from now; None without the header. Past [daemon] idempotency_ttl it is refused: the
    key would be purged before then."""
    value = request.headers.get(EXPIRATION_HEADER)
    if value is None:
        return None
    bad = ApiError(400, f"bad {EXPIRATION_HEADER}",
                   [{"loc": ["header", EXPIRATION_HEADER], "msg": "an epoch time or an ISO 8601 time in the future"}])
    now = time.time()
    try:
        if value.strip().isdigit():
            at = float(value)
            at = at / 1000.0 if at > 1e11 else at        # milliseconds or seconds
        else:
            at = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise bad from None
    if not math.isfinite(at) or at <= now:
        raise bad
    limits = getattr(state.router, "limits", None) or state.router.policy.model.daemon
    ttl_max = limits.idempotency_ttl / 1000.0
    if at - now > ttl_max:
        raise ApiError(422, f"{EXPIRATION_HEADER} is later than [daemon] idempotency_ttl allows",
                       [{"loc": ["header", EXPIRATION_HEADER],
                         "msg": f"at most {int(ttl_max)} s from now (raise [daemon] idempotency_ttl)"}])
    return at - now


async def send(request: web.Request) -> web.Response:
    """Courier's POST /send: the /v1 send (same checks, same 4xx/503), answered {"requestId"}."""
    state = request.app[STATE_KEY]
    json_content_type_check(request)
    key = send_key(state, request)
    ttl = _expiration_ttl(state, request)
    send_load_check(state, request)
    result = await submit_send(state, request, key, ttl)
    headers = {"Location": "/messages/" + result.message_id}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return json_response({"requestId": result.message_id}, status=202, headers=headers)


async def get_message(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    mid = request.match_info["message_id"]
    status = _status_or_404(state, mid)
    return json_response(message_details(status, state.router.store.get_request(mid)))


async def get_history(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    status = _status_or_404(state, request.match_info["message_id"])
    return json_response({"results": history(status)})


_STATUS_FILTER = {"ENQUEUED": "pending", "SENT": "pending", "DELIVERED": "delivered",
                  "UNDELIVERABLE": "undeliverable", "CANCELED": "cancelled"}
_LIST_PARAMS = frozenset({"cursor", "status", "recipient"})


async def list_messages(request: web.Request) -> web.Response:
    """GET /messages: newest first, MAX_PAGE a page; `cursor` from the last page's paging;
    filters `status` (Courier's words; repeatable) and `recipient` (user_id, email or phone)."""
    state = request.app[STATE_KEY]
    q = request.query
    for name in q:
        if name not in _LIST_PARAMS:    # Courier's other filters: refused, never ignored
            raise ApiError(422, f"routingd does not filter messages by {name!r}",
                           [{"loc": ["query", name], "msg": "supported filters: cursor, status, recipient"}])
    statuses = q.getall("status", [])
    for s in statuses:
        if s not in _STATUS_FILTER:
            raise ApiError(422, f"unknown status {s!r}",
                           [{"loc": ["query", "status"], "msg": "one of " + ", ".join(_STATUS_FILTER)}])
    wanted = set(statuses)
    stored = {_STATUS_FILTER[s] for s in wanted}
    cursor = q.get("cursor") or None
    if cursor is not None and not _ID_RE.fullmatch(cursor):
        raise ApiError(422, "bad cursor", [{"loc": ["query", "cursor"], "msg": "a cursor from paging.cursor"}])
    recipient = q.get("recipient") or None
    store = state.router.store
    results: list[dict[str, Any]] = []
    last: str | None = cursor
    more = False
    # expired shares UNDELIVERABLE with undeliverable, and ENQUEUED/SENT share pending: the store
    # filters by one stored status at a time only when the wanted set maps to exactly one
    one = next(iter(stored)) if len(stored) == 1 and "UNDELIVERABLE" not in wanted else None
    for _ in range(20):             # bounded: at most 20 store pages of 2 x MAX_PAGE per answer
        ids = store.list_message_ids(last, 2 * MAX_PAGE, status=one, recipient=recipient)
        for mid in ids:
            last = mid
            st = state.router.status(mid)
            if st is None:
                continue
            details = message_details(st, store.get_request(mid))
            if wanted and details["status"] not in wanted:
                continue
            if len(results) == MAX_PAGE:
                more = True
                break
            results.append(details)
        if more or len(ids) < 2 * MAX_PAGE:
            break
    else:
        more = True
    cursor_out = results[-1]["id"] if more and results else (last if more else None)
    return json_response({"paging": {"cursor": cursor_out, "more": more}, "results": results})


async def cancel(request: web.Request) -> web.Response:
    """Courier's cancel: 200 with the message record when it is cancelled now, 409 with the
    record when it had already finished (Courier documents both answers)."""
    state = request.app[STATE_KEY]
    mid = request.match_info["message_id"]
    result = await _cancel(state, mid)
    status = _status_or_404(state, mid)
    return json_response(message_details(status, state.router.store.get_request(mid)),
                         status=200 if result[0] else 409)


async def cancel_v1(request: web.Request) -> web.Response:
    """POST /v1/messages/{id}/cancel: 200 with the /v1 status, 409 (an error body) when the
    message had already finished."""
    state = request.app[STATE_KEY]
    mid = request.match_info["message_id"]
    cancelled, final = await _cancel(state, mid)
    if not cancelled:
        raise ApiError(409, f"message {mid!r} has already finished ({final}); nothing was cancelled",
                       [{"loc": ["path", "message_id"], "msg": f"status {final}"}])
    return json_response(_status_or_404(state, mid))


async def _cancel(state: ApiState, mid: str) -> tuple[bool, str]:
    try:
        result = await state.router.cancel(mid) if _ID_RE.fullmatch(mid) else None
    except Overloaded as e:
        raise _unavailable(e) from None
    if result is None:
        raise ApiError(404, f"no message {mid!r}", [{"loc": ["path", "message_id"], "msg": "unknown message"}])
    cancelled, final = result
    return cancelled, final


def _user_id(request: web.Request) -> str:
    uid = request.match_info["user_id"]
    if not _USER_ID_RE.fullmatch(uid):
        raise ApiError(404, "no such profile", [{"loc": ["path", "user_id"], "msg": "1-255 characters, no controls"}])
    return uid


async def _profile_body(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE_KEY]
    json_content_type_check(request)
    body = parse_json_object(await read_body(request, state.max_body))
    extra = [k for k in body if k != "profile"]
    if extra:
        raise ApiError(422, "invalid profile", [{"loc": [k], "msg": "unknown field"} for k in extra])
    profile = body.get("profile")
    if not isinstance(profile, dict):
        raise ApiError(422, "invalid profile", [{"loc": ["profile"], "msg": "an object is required"}])
    return profile


async def put_profile(request: web.Request) -> web.Response:
    """PUT replaces the profile, POST merges into it (Courier's Profiles API)."""
    state = request.app[STATE_KEY]
    uid = _user_id(request)
    profile = await _profile_body(request)
    await profiles_of(state.router.store).put(uid, profile, time.time(), merge=request.method == "POST")
    return json_response({"status": "SUCCESS"})


async def get_profile(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    uid = _user_id(request)
    profile = profiles_of(state.router.store).get(uid)
    if profile is None:
        raise ApiError(404, f"no profile for {uid!r}", [{"loc": ["path", "user_id"], "msg": "unknown profile"}])
    return json_response({"profile": profile})


async def delete_profile(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    uid = _user_id(request)
    if not await profiles_of(state.router.store).delete(uid):
        raise ApiError(404, f"no profile for {uid!r}", [{"loc": ["path", "user_id"], "msg": "unknown profile"}])
    return web.Response(status=204)


def add_courier_routes(app: web.Application) -> None:
    """Courier's paths beside /v1 (called by api.create_app)."""
    r = app.router
    r.add_post("/send", send)
    r.add_get("/messages", list_messages)
    r.add_get("/messages/{message_id}", get_message)
    r.add_get("/messages/{message_id}/history", get_history)
    r.add_post("/messages/{message_id}/cancel", cancel)
    r.add_post("/v1/messages/{message_id}/cancel", cancel_v1)
    r.add_put("/profiles/{user_id}", put_profile)
    r.add_post("/profiles/{user_id}", put_profile)
    r.add_get("/profiles/{user_id}", get_profile)
    r.add_delete("/profiles/{user_id}", delete_profile)
