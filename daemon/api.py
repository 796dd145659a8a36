"""The HTTP face of the daemon: an aiohttp application over the runtime `Router`.

Every answer is JSON (except /metrics); every error is `{"error": "...", "details": [{"loc":
[...], "msg": "..."}]}`. Bearer tokens guard everything but the probes (/healthz, /readyz),
/metrics and /openapi.json; a receipt from a provider with a `receipt_secret` is authenticated
by its HMAC signature instead. See docs/api.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Protocol, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, ValidationError

from . import ops_api
from .connections import connection_of
from .core.plan import PlanError
from .errors import RoutingdError
from .core.policy import problems_from_validation
from .core.request import IDEMPOTENCY_KEY_RE, ReceiptStatus, SendRequest
from .receipts import VENDOR_TYPES, BadReceipt, BadSignature
from .receipts.handler import handle as handle_vendor_receipt
from .openapi import MAX_JSON_DEPTH, openapi_document
from .metrics import Metrics
from .runtime import Overloaded, Router, timeout_problems
from .store import StoreError

log = logging.getLogger("routingd.api")

Phase = Literal["starting", "ready", "draining"]
SIGNATURE_HEADER = "X-Routingd-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")      # what a message or attempt id can look like
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON_CONTENT_TYPE = "application/json; charset=utf-8"     # what json_response() sends


# --------------------------------------------------------------------------- collaborators


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    version: str                      # the active version after the attempt
    changed: bool = False
    errors: tuple[str, ...] = ()      # "PATH: key.path: reason" lines when not ok
    warnings: tuple[str, ...] = ()


class Reloader(Protocol):
    """Re-reads routing.toml, validates it and swaps it in (daemon/service.py)."""

    async def reload(self, trigger: str) -> ReloadResult: ...

    def info(self) -> dict[str, Any]: ...


@dataclass
class ApiState:
    """What the handlers share; `phase` and `tokens` change while the process runs."""

    router: Router
    metrics: Metrics
    reloader: Reloader
    tokens: Sequence[bytes] = ()
    max_body: int = 256 * 1024
    body_timeout_s: float = 30.0      # [daemon] body_timeout: a request's body within this of its headers
    phase: Phase = "starting"
    extra_ready_checks: list[Callable[[], str | None]] = field(default_factory=list)


STATE_KEY: web.AppKey[ApiState] = web.AppKey("routingd_state", ApiState)


# --------------------------------------------------------------------------- errors


class ApiError(RoutingdError):
    """An error answer: status, one-line message, optional field details and headers.
    close: the connection is closed once the answer is written (its client is not trusted to
    send anything more, e.g. a body that did not arrive in time)."""

    close = False

    def __init__(self, status: int, error: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response({"error": self.error, "details": self.details}, status=self.status,
                             headers=self.headers)


_encode = json.JSONEncoder(separators=(",", ":")).encode    # json.dumps(..., separators=) builds one per call


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=_encode(body), status=status, content_type="application/json", headers=headers)


def validation_details(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """A request's validation errors as the body's `details`, worded as routing.toml's are (one
    formatter: daemon/core/policy.py problems_from_validation; an inline routing error points at
    message.routing.channels.1.channels.0, as a user writes it)."""
    return [{"loc": list(p.loc), "msg": p.msg} for p in problems_from_validation(err, prefix)]


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


def _unavailable(e: Overloaded) -> ApiError:
    retry = max(1, int(round(e.retry_after_s or 1)))
    return ApiError(503, f"{e.reason}; retry later", headers={"Retry-After": str(retry)})


async def message_status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    mid = request.match_info["message_id"]
    status = state.router.status(mid) if _ID_RE.fullmatch(mid) else None
    if status is None:
        raise ApiError(404, f"no message {mid!r}", [{"loc": ["path", "message_id"], "msg": "unknown message"}])
    return json_response(status)


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


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.phase != "ready":
        return json_response({"status": state.phase, "error": f"routingd is {state.phase}", "details": []},
                             status=503)
    for check in state.extra_ready_checks:
        problem = check()
        if problem:
            return json_response({"status": "not ready", "error": problem, "details": []}, status=503)
    return json_response({"status": "ready", "version": state.router.policy.version})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def reload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    result = await state.reloader.reload("http")
    if not result.ok:
        raise ApiError(422, "invalid configuration; the previous policy stays active",
                       [{"loc": ["config"], "msg": line} for line in result.errors])
    return json_response({"status": "reloaded" if result.changed else "unchanged", "version": result.version,
                          "warnings": list(result.warnings)})


async def config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].reloader.info())


# --------------------------------------------------------------------------- the app


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level logger. A request the HTTP parser rejects (a header line over
    8190 bytes, more than 128 headers, a NUL in a header, bytes that are not HTTP) is the
    client's fault: aiohttp answers it 400 and closes the connection; here it is one WARNING
    line without the traceback and without the offending bytes (they may hold a credential).
    Anything else is logged as aiohttp would."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("routingd.http"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.logger.warning("rejected a malformed HTTP request (%s %s); the connection was closed",
                                exc.code, type(exc).__name__)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            kw["exc_info"] = None
        self.logger.debug(msg, *args, **kw)


def create_app(state: ApiState) -> web.Application:
    # client_max_size is a backstop; read_body() answers 413 itself with a JSON body.
    app = web.Application(middlewares=[api_middleware],
                          client_max_size=state.max_body + 1024,
                          handler_args={"logger": ProtocolLog()})
    app[STATE_KEY] = state
    app.router.add_post("/v1/send", send)
    app.router.add_get("/v1/messages/{message_id}", message_status)
    app.router.add_post("/v1/receipts/{provider}", receipt)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/v1/config", config)
    ops_api.setup(app, state)       # /v1/providers, drain/resume, the /ui status page (daemon/ops_api.py)
    from .courier_api import add_courier_routes; add_courier_routes(app)   # noqa: E702 - Courier's paths (docs/api.md)
    return app
