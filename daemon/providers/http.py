"""Provider adapter of type `http` (registered with routingd.daemon.adapters on import), and the HTTP
helpers the vendor adapters share (the client session, Retry-After, bounded body reads).

http     POSTs AttemptRequest.payload() as JSON (plus `rendered`: title, text, html when the
         message names a template) to the provider's `url` with its configured
         `headers` plus `Idempotency-Key: <message_id>:<channel>:<provider>`, on the one shared
         aiohttp.ClientSession of the process (AdapterContext.http_session). Any HTTP answer is
         an Outcome(status=...) (the engine classifies it per `failover.on`), with
         `retry_after_s` from a Retry-After header in seconds or as an HTTP-date. A refused or
         reset connection, a malformed answer or a truncated body is Outcome(network=True).
         The adapter keeps no timeout of its own: the runtime cancels the task at the attempt
         deadline, which closes the connection (a generous safety timeout backs that up).
         With `body` (a Jinja2 template), the JSON body is that template rendered instead, so
         the provider can speak any JSON API (variables: body_variables()); a body that does not
         render, or is not JSON, fails the attempt as a 400 naming why, without a call.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any, Callable, Iterable, Mapping

import aiohttp

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .redact import config_secrets, describe_error, redact
from ..core.templates import compile_source, template_line

_MAX_BODY = 64 * 1024
_SAFETY_S = 5.0


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds ("120") or an HTTP-date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        secs = None
    if secs is not None:
        return secs if secs >= 0 and secs == secs and secs != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:     # RFC 9110 dates are GMT
        import datetime as _dt
        when = when.replace(tzinfo=_dt.timezone.utc)
    now = time.time() if now_wall is None else now_wall
    return max(0.0, when.timestamp() - now)


def make_http_session(limit: int = 1000) -> aiohttp.ClientSession:
    """The process-wide client session for `http` providers (the Router makes it when none is given)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                 raise_for_status=False, headers={"User-Agent": "routingd"})


class HttpAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.url: str = config.url
        self.headers: dict[str, str] = dict(config.headers)
        self.ctx = ctx
        # what an error or an echoing provider could show: masked in every detail (redact.py)
        self.secrets = config_secrets(self.url, self.headers)
        source = getattr(config, "body", None)
        self.body = None if source is None else compile_source(source)[0]   # validated by the policy

    async def send(self, req: AttemptRequest) -> Outcome:
        session = self.ctx.http_session
        headers = {**self.headers, "Idempotency-Key": req.idempotency_key}
        send_kw: dict[str, Any]
        if self.body is None:
            payload = req.payload()
            if req.rendered is not None:    # the message's template, rendered for this channel
                c = req.rendered
                payload["rendered"] = {"title": c.title, "text": c.text, "html": c.html}
            send_kw = {"json": payload}
        else:
            rendered = self._render_body(req)
            if isinstance(rendered, Outcome):
                return rendered
            send_kw = {"data": rendered}
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        answer = await bounded_request(session, "POST", self.url, deadline_s=req.deadline_s, secrets=self.secrets,
                                       headers=headers, **send_kw)
        if isinstance(answer, Outcome):
            return answer
        status, resp_headers, body = answer
        retry_after = parse_retry_after(resp_headers.get("Retry-After"))
        detail = ""
        if not 200 <= status < 300:
            detail = f"HTTP {status}"
            text = body[:200].decode("utf-8", "replace").strip()
            if text:
                detail = redact(f"{detail}: {text}", self.secrets)
        return Outcome(status=status, retry_after_s=retry_after, detail=detail)


    def _render_body(self, req: AttemptRequest) -> bytes | Outcome:
        """The body template rendered for `req`, checked to be JSON; a 400 Outcome if it is not
        (a fault of this provider's config or the message: failing over would not fix it)."""
        assert self.body is not None
        try:
            text = self.body.render(body_variables(req))
        except Exception as e:  # noqa: BLE001 - any template error fails this attempt, not the daemon
            line = template_line(e)
            where = f"body template (line {line})" if line is not None else "body template"
            return Outcome(status=400, detail=f"{where}: {getattr(e, 'message', None) or e}")
        try:
            json.loads(text)
        except ValueError as e:
            return Outcome(status=400, detail=f"body template: the rendered body is not JSON: {e}")
        return text.encode()


def body_variables(req: AttemptRequest) -> dict[str, Any]:
    """What an http provider's body template sees: the attempt's identity, the recipient, the
    channel's content (title, text, html: rendered from the message's template, else
    content.title / content.body), the request's own content and metadata."""
    c = req.body()
    return {"message_id": req.message_id, "attempt_id": req.attempt_id, "channel": req.channel,
            "provider": req.provider, "idempotency_key": req.idempotency_key, "to": req.to,
            "title": c.title, "text": c.text, "html": c.html, "content": req.content, "metadata": req.metadata}


async def bounded_request(session: Any, method: str, url: str, *, deadline_s: float, secrets: Iterable[str] = (),
                          describe: Callable[[BaseException], str] | None = None,
                          no_answer: str = "no answer within the safety timeout",
                          **kwargs: Any) -> tuple[int, Mapping[str, str], bytes] | Outcome:
    """One request with no redirects, its body read up to _MAX_BODY: (status, headers, body), or
    Outcome(network=True) when no answer came -- by the attempt deadline plus a safety timeout
    (`no_answer`), or a refused or reset connection, a malformed answer or a truncated body
    (`describe(e)`, by default redact.describe_error masking `secrets`). The one request path of
    http and of the vendor adapters (sendgrid, ses; the others through vendor.vendor_request).
    No session (the runtime has not started) is a network failure too."""
    if session is None:
        return Outcome(network=True, detail="no HTTP client session (the runtime has not started)")
    timeout = aiohttp.ClientTimeout(total=max(0.001, deadline_s) + _SAFETY_S)
    try:
        async with session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs) as resp:
            body = await _read_body(resp)
            return resp.status, resp.headers, body
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError:
        return Outcome(network=True, detail=no_answer)
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return Outcome(network=True, detail=describe(e) if describe is not None else describe_error(e, secrets))


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The body up to _MAX_BODY bytes; a body cut short by the peer raises ClientPayloadError."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _MAX_BODY:
            break                      # enough to describe it; the rest is discarded with the connection
    return b"".join(chunks)[:_MAX_BODY]


register_adapter("http", HttpAdapter)
