"""Provider adapter of type `http` (registered with routingd.daemon.adapters on import), and the HTTP
helpers the vendor adapters share (the client session, Retry-After, bounded body reads).

http     POSTs AttemptRequest.payload() as JSON to the provider's `url` with its configured
         `headers` plus `Idempotency-Key: <message_id>:<channel>:<provider>`, on the one shared
         aiohttp.ClientSession of the process (AdapterContext.http_session). Any HTTP answer is
         an Outcome(status=...) (the engine classifies it per `failover.on`), with
         `retry_after_s` from a Retry-After header in seconds or as an HTTP-date. A refused or
         reset connection, a malformed answer or a truncated body is Outcome(network=True).
         The adapter keeps no timeout of its own: the runtime cancels the task at the attempt
         deadline, which closes the connection (a generous safety timeout backs that up).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import aiohttp

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome

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

    async def send(self, req: AttemptRequest) -> Outcome:
        session = self.ctx.http_session
        if session is None:
            return Outcome(network=True, detail="no HTTP client session (the runtime has not started)")
        headers = {**self.headers, "Idempotency-Key": req.idempotency_key}
        timeout = aiohttp.ClientTimeout(total=max(0.001, req.deadline_s) + _SAFETY_S)
        try:
            async with session.post(self.url, json=req.payload(), headers=headers, timeout=timeout,
                                    allow_redirects=False) as resp:
                body = await _read_body(resp)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            return Outcome(network=True, detail="no answer within the safety timeout")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return Outcome(network=True, detail=_describe(e))
        detail = ""
        if not 200 <= status < 300:
            detail = f"HTTP {status}"
            text = body[:200].decode("utf-8", "replace").strip()
            if text:
                detail += f": {text}"
        return Outcome(status=status, retry_after_s=retry_after, detail=detail)


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


def _describe(e: BaseException) -> str:
    kind = type(e).__name__
    text = " ".join(str(e).split())
    text = f"{kind}: {text}" if text else kind
    return text if len(text) <= 300 else text[:297] + "..."


register_adapter("http", HttpAdapter)
