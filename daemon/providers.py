"""Provider adapters of type `http` and `sandbox` (registered with daemon.adapters on import).

http     POSTs AttemptRequest.payload() as JSON to the provider's `url` with its configured
         `headers` plus `Idempotency-Key: <message_id>:<channel>:<provider>`, on the one shared
         aiohttp.ClientSession of the process (AdapterContext.http_session). Any HTTP answer is
         an Outcome(status=...) (the engine classifies it per `failover.on`), with
         `retry_after_s` from a Retry-After header in seconds or as an HTTP-date. A refused or
         reset connection, a malformed answer or a truncated body is Outcome(network=True).
         The adapter keeps no timeout of its own: the runtime cancels the task at the attempt
         deadline, which closes the connection (a generous safety timeout backs that up).
sandbox  an in-process stand-in drawing latency, errors, rate limits and outages from
         daemon.core.behaviour.draw_answer -- the same model the simulator uses. "hang" never
         answers (the runtime cancels it at the deadline), "refused" is a network failure, and
         with confirm = "receipt" a `delivered` receipt is fed back into the runtime through
         AdapterContext.receipts after the drawn receipt delay.
         Besides send(), it offers `timed_answer(req) -> (delay_s | None, Outcome, after)`: the
         whole answer drawn at once (delay None: it never answers), `after()` (or None) to be run
         when the answer is taken (it starts the receipt). The runtime uses it to answer with one
         loop timer instead of a task, a coroutine and a sleeping future per attempt; send() is the
         same answer, awaited.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import time
from typing import Any, Callable

import aiohttp

from .adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from .core.behaviour import RateWindow, draw_answer
from .core.engine import Outcome

_MAX_BODY = 64 * 1024
_NO_ANSWER = Outcome(network=True, detail="no answer (sandbox fail = 'hang')")   # never given out
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


class SandboxAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        seed = None if ctx.rng_seed is None else f"{ctx.rng_seed}:{name}"
        self.rng = random.Random(seed)
        self.window = RateWindow(config.rate_limit)
        self.receipt_tasks: set[asyncio.Task[None]] = set()

    async def send(self, req: AttemptRequest) -> Outcome:
        delay, outcome, after = self.timed_answer(req)
        if delay is None:
            await asyncio.get_running_loop().create_future()   # never resolves: cancelled at the deadline
        else:
            await asyncio.sleep(delay)
        if after is not None:
            after()
        return outcome

    def timed_answer(self, req: AttemptRequest) -> tuple[float | None, Outcome, Callable[[], None] | None]:
        """The answer to `req` drawn now: after delay_s seconds (None: never), this Outcome; run
        `after()` when it is taken (not if the attempt was cancelled first)."""
        cfg = self.config
        answer = draw_answer(cfg, cfg.fail, self.rng, time.monotonic(), self.window,
                             confirm_receipt=cfg.confirm == "receipt")
        if answer.kind == "hang":
            return None, _NO_ANSWER, None
        if answer.kind == "refused":
            return answer.delay_s, Outcome(network=True, detail=f"connection refused (sandbox fail = {cfg.fail!r})"), None
        after = None
        if answer.receipt_delay_s is not None and self.ctx.receipts is not None:
            after = functools.partial(self._start_receipt, req.attempt_id, answer.receipt_delay_s)
        detail = "" if answer.status is None or 200 <= answer.status < 300 else f"sandbox status {answer.status}"
        return answer.delay_s, Outcome(status=answer.status, retry_after_s=answer.retry_after_s, detail=detail), after

    def _start_receipt(self, attempt_id: str, delay_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self._receipt(attempt_id, delay_s))
        self.receipt_tasks.add(task)
        task.add_done_callback(self.receipt_tasks.discard)

    async def _receipt(self, attempt_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.ctx.receipts is not None:
            await self.ctx.receipts(self.name, attempt_id, "delivered")

    async def close(self) -> None:
        for t in list(self.receipt_tasks):
            t.cancel()
        self.receipt_tasks.clear()


class UnavailableAdapter(ProviderAdapter):
    """Stands in for a provider whose type has no adapter: every attempt is a network failure."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def send(self, req: AttemptRequest) -> Outcome:
        return Outcome(network=True, detail=self.reason)


register_adapter("http", HttpAdapter)
register_adapter("sandbox", SandboxAdapter)
