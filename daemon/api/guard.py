"""What every request passes before its handler: the middleware (errors as JSON, no traceback),
the bearer-token check, the browser checks without tokens, and bounded body reading
(docs/security.md)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web

from ..connections import connection_of
from ..receipts import VENDOR_TYPES
from ..openapi import MAX_JSON_DEPTH
from ..store import StoreError
from .base import PUBLIC_PATHS, ApiState, STATE_KEY, ApiError

log = logging.getLogger("routingd.api")


@web.middleware
async def api_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """Bearer-token check (auth_check), then the handler; every error as a JSON body, an
    unexpected exception logged and answered 500, no trace. One middleware, not two: each one
    is a coroutine frame and a partial call per request (aiohttp adds a third of its own).
    The connection's guard (daemon/connections.py) hears when the request starts and ends: no
    header or idle timeout cuts a request whose handler runs."""
    conn = connection_of(request.transport)
    if conn is not None:
        conn.request_started()
    try:
        state = request.app[STATE_KEY]
        if state.tokens:
            auth_check(state, request)
        else:
            browser_check(request)
        if request.method == "POST" and (request.path in JSON_BODY_PATHS or (
                request.path.startswith("/v1/receipts/") and _vendor_config(state, request) is None)):
            # (a vendor's webhook comes in its own content type; its signature authenticates it)
            json_content_type_check(request)
        return await handler(request)
    except ApiError as e:
        if not e.close:
            return e.response()
        resp = e.response()
        await resp.prepare(request)
        await resp.write_eof()
        request.protocol.force_close()      # no lingering read of the rest of the body
        return resp
    except StoreError as e:
        log.error("%s %s: state store error: %s", request.method, request.path, e)
        return ApiError(503, "routingd cannot use its state store right now (the daemon log says why)",
                        headers={"Retry-After": "5"}).response()
    except ConnectionResetError:
        # the client left mid-request (in its body): an answer nobody reads, which aiohttp drops
        # quietly when it cannot write it (an exception here would be logged as a server error)
        return ApiError(400, "the client closed the connection").response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: "not found", 405: f"method {request.method} not allowed on {request.path}",
                  413: "request body too large"}.get(e.status, e.reason.lower())
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return ApiError(e.status, reason, headers=headers).response()
    except Exception:  # noqa: BLE001 - the catch-all that keeps tracebacks off the wire
        log.exception("internal error on %s %s", request.method, request.path)
        return ApiError(500, "internal error; the daemon log has the details").response()
    finally:
        if conn is not None:
            conn.request_done()


JSON_BODY_PATHS = frozenset({"/v1/send"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _loopback_host(value: str) -> bool:
    """"127.0.0.1", "localhost:8080", "[::1]:8080": a loopback name with an optional port."""
    v = value.strip().lower()
    if v.startswith("["):
        host = v[: v.find("]") + 1] if "]" in v else v
    else:
        host = v.rpartition(":")[0] if v.count(":") == 1 else v
    host = host.rstrip(".")
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def browser_check(request: web.Request) -> None:
    """Without tokens the API trusts every local process, so no web page may reach it: a Host
    that is not a loopback name (DNS rebinding) and a cross-site request (Origin of another
    host, Sec-Fetch-Site: cross-site) are refused 403 (docs/security.md)."""
    host = request.headers.get("Host", "")
    if not _loopback_host(host):
        raise ApiError(403, "without api_tokens only a loopback Host is accepted",
                       [{"loc": ["header", "Host"], "msg": "expected 127.0.0.1, localhost or [::1] (with a port)"}])
    origin = request.headers.get("Origin")
    if origin is not None:
        rest = origin.partition("://")[2]
        if not rest or not _loopback_host(rest.rstrip("/")):
            raise ApiError(403, "cross-site request refused",
                           [{"loc": ["header", "Origin"], "msg": "only loopback origins without api_tokens"}])
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise ApiError(403, "cross-site request refused",
                       [{"loc": ["header", "Sec-Fetch-Site"], "msg": "cross-site requests are refused"}])


def json_content_type_check(request: web.Request) -> None:
    """A JSON endpoint takes Content-Type: application/json only (415 otherwise): a browser cannot
    send that cross-site without a CORS preflight, which routingd never answers."""
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json",
                       [{"loc": ["header", "Content-Type"], "msg": f"got {request.content_type or 'none'!r}"}])


def auth_check(state: ApiState, request: web.Request) -> None:
    """Raise the 401 unless the request may pass: a public path, a receipt for a provider with a
    receipt_secret (its HMAC signature authenticates it), or a configured bearer token."""
    if request.path in PUBLIC_PATHS:
        return
    if request.path.startswith("/v1/receipts/") and (_receipt_secret(state, request) is not None
                                                     or _vendor_config(state, request) is not None):
        return
    header = request.headers.get("Authorization", "")
    if not token_ok(header, state.tokens):
        well_formed = header.partition(" ")[0].lower() == "bearer" and header.partition(" ")[2].strip()
        raise ApiError(401, "missing or invalid bearer token",
                       [{"loc": ["header", "Authorization"],
                         "msg": "token not accepted" if well_formed else "expected 'Bearer <token>'"}],
                       headers={"WWW-Authenticate": 'Bearer realm="routingd"'})


def token_ok(header: str, tokens: Sequence[bytes]) -> bool:
    """Constant-time comparison against every configured token (no early exit)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates; surrogateescape gives
    # the raw bytes back (they then simply do not match) instead of a UnicodeEncodeError.
    candidate = given.strip().encode("utf-8", "surrogateescape")
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(candidate, t)
    return ok


def _vendor_config(state: ApiState, request: web.Request) -> Any:
    """The config of the receipt's provider if it is of a vendor type (its webhook is verified
    the vendor's way: daemon/receipts/), else None."""
    provider = request.match_info.get("provider") or request.path.rsplit("/", 1)[-1]
    cfg = state.router.provider_config(provider)
    return cfg if getattr(cfg, "type", None) in VENDOR_TYPES else None


def _receipt_secret(state: ApiState, request: web.Request) -> str | None:
    provider = request.match_info.get("provider") or request.path.rsplit("/", 1)[-1]
    return state.router.receipt_secret(provider)


# --------------------------------------------------------------------------- body helpers


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, at most `limit` bytes (413), all of it within `timeout_s` (408, and the
    connection is closed: a client trickling its body must not hold it open)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body too large (limit {limit} bytes)")
    content = request.content
    if content.is_eof():            # the whole (small) body arrived with the headers: no awaits
        raw = content.read_nowait(-1)
        if len(raw) > limit:
            raise ApiError(413, f"request body too large (limit {limit} bytes)")
        return raw
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body too large (limit {limit} bytes)")
                chunks.append(chunk)
    except TimeoutError:
        e = ApiError(408, f"request body not received within [daemon] body_timeout ({timeout_s:g}s)",
                     headers={"Connection": "close"})
        e.close = True
        raise e from None
    return b"".join(chunks)


def parse_json_object(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The body as a JSON object nested at most `max_depth` levels deep, else a 400."""
    too_deep = ApiError(400, f"request body nests deeper than {max_depth} levels",
                        [{"loc": ["body"], "msg": f"at most {max_depth} nested objects/arrays"}])
    try:
        body = json.loads(raw)
    except RecursionError:          # the decoder's own recursion limit (~1000 levels)
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "request body is not valid JSON", [{"loc": ["body"], "msg": str(e)}]) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", [{"loc": ["body"], "msg": "expected an object"}])
    # Nesting deeper than max_depth needs more than max_depth opening brackets; counting them in
    # the raw bytes (C speed; brackets inside strings count too, so it can only over-estimate)
    # spares the walk over the parsed body for nearly every request.
    opening = raw.count(b"{") + raw.count(b"[") if isinstance(raw, (bytes, bytearray)) else \
        str(raw).count("{") + str(raw).count("[")
    if opening > max_depth and json_depth(body) > max_depth:
        raise too_deep
    return body


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, {} or [] is 1), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
        stack.extend((c, d + 1) for c in children)
    return deepest
