"""A real HTTP provider stand-in on 127.0.0.1 with scriptable answers, for tests and benchmarks.

In-process:

    async with ProviderStandin([{"status": 503}, {"status": 200}]) as s:
        ... point an `http` provider at s.url ...
        await s.wait_for(2)                 # two requests arrived (bounded wait)
        s.requests[0].idempotency_key, s.requests[0].json, s.requests[1].finished

As a separate process (prints the port on its first stdout line, serves until SIGTERM/SIGINT):

    python tests/provider_standin.py --port 0 --script '[{"hang": true}]' \
        [--receipt-url http://127.0.0.1:8080/v1/receipts/ses --receipt-secret S]

    and control it over HTTP:  GET /_requests (JSON list)  PUT /_script (JSON action list)
                               POST /_clear (forget the recorded requests)

    python tests/provider_standin.py --port 0 --bucket 100,10     # a vendor's rate limit (below)

Script: a list of actions, used one per request in arrival order; the last one repeats (an
empty script answers 200). Or a callable `(n, request_json) -> action` for in-process use, such
as `TokenBucket(rate, burst)`: a vendor's rate limit, a real token bucket over the requests'
arrival times that answers 200 within it and 429 (Retry-After 1) above it (`--bucket RATE,BURST`).
Action keys (all optional):

    status        HTTP status to answer (200)
    delay         seconds to wait before answering
    hang          true: never answer; the request ends when the client goes away
    hold          true: answer (as the other keys say) only once `await release()` was called
                  (in-process): the test decides when the daemon hears the outcome
    retry_after   Retry-After header value (seconds as a number/string, or an HTTP-date)
    headers       extra response headers
    body          response body (str, or anything JSON-serialisable)
    reset         true: reset the TCP connection (RST) instead of answering
    garbage       true: answer bytes that are not HTTP, then close
    truncated     true: a 200 header promising a longer body than is sent, then close
    receipt       "delivered" | "failed": after answering, POST {"attempt_id", "status"} to the
                  receipt URL (with "X-Routingd-Signature: sha256=<hex HMAC-SHA256 of the body>"
                  when a receipt secret is set)
    receipt_delay seconds between the answer and the receipt

Each request is recorded as a `Recorded`: n, method, path, headers, idempotency_key, json, body,
received_at / ended_at (time.monotonic()), finished: "answered" | "cancelled" (the client went
away first) | "reset" | "garbage" | "truncated".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Union

from aiohttp import ClientSession, ClientTimeout, web

Action = dict[str, Any]
Script = Union[list[Action], Callable[[int, Any], Action], None]


def seeded_answers(seed: int, max_delay_s: float, *, error: float = 0.0, hang: float = 0.0,
                   reset: float = 0.0) -> Callable[[int, Any], Action]:
    """A script whose answers are drawn from Random(seed) in arrival order, so that a run is the
    same for the same seed: a 503 with probability `error`, no answer (`hang`), a reset
    connection (`reset`), else a delay of up to `max_delay_s`. With all three 0 only the delay
    is drawn."""
    rng = random.Random(seed)
    if not (error or hang or reset):
        return lambda n, body: {"delay": rng.uniform(0.0, max_delay_s)}

    def action(n: int, body: Any) -> Action:
        x = rng.random()
        if x < error:
            return {"status": 503}
        if x < error + hang:
            return {"hang": True}
        if x < error + hang + reset:
            return {"reset": True}
        return {"delay": rng.uniform(0.0, max_delay_s)}

    return action


def sign(secret: str, raw: bytes) -> str:
    """The receipt signature a provider sends: "sha256=<hex HMAC-SHA256 of the raw body>"."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


class TokenBucket:
    """A vendor's rate limit: `rate` requests a second, `burst` saved up (full at the start), over
    the arrival times of the requests (time.monotonic()). Within it: 200; above it: 429 with
    Retry-After 1, counted in `limited`. A script (callable) for ProviderStandin."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()
        self.limited = 0

    def __call__(self, _n: int, _body: Any) -> Action:
        # called on the stand-in's event loop, one request at a time: no lock needed
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return {"status": 200}
        self.limited += 1
        return {"status": 429, "retry_after": 1}


@dataclass
class Recorded:
    n: int
    method: str
    path: str
    headers: dict[str, str]
    idempotency_key: str | None
    json: Any
    body: str
    received_at: float
    ended_at: float | None = None
    finished: str | None = None
    action: Action = field(default_factory=dict)


class ProviderStandin:
    def __init__(self, script: Script = None, *, receipt_url: str | None = None,
                 receipt_secret: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script: Script = script
        self.receipt_url = receipt_url
        self.receipt_secret = receipt_secret
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        self.receipts_sent: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self._bg: set[asyncio.Task[None]] = set()
        self._session: ClientSession | None = None
        self._released = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/send"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "ProviderStandin":
        app = web.Application()
        app.router.add_get("/_requests", self._h_requests)
        app.router.add_put("/_script", self._h_script)
        app.router.add_post("/_clear", self._h_clear)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for t in list(self._bg):
            t.cancel()
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=2)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ProviderStandin":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def release(self) -> None:
        """Let every held request (action "hold") answer, now and from now on."""
        self._released.set()

    def set_script(self, script: Script) -> None:
        self.script = script

    async def wait_for(self, count: int, timeout: float = 10.0, finished: bool = False) -> list[Recorded]:
        """Wait until `count` requests arrived (and, with finished=True, ended); bounded."""
        def ok() -> bool:
            if len(self.requests) < count:
                return False
            return not finished or all(r.finished is not None for r in self.requests[:count])
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ok), timeout)
        return self.requests[:count]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _action(self, n: int, body: Any) -> Action:
        s = self.script
        if s is None:
            return {}
        if callable(s):
            return dict(s(n, body) or {})
        if not s:
            return {}
        return dict(s[min(n, len(s) - 1)])

    # ------------------------------------------------------------------ control endpoints

    async def _h_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def _h_script(self, request: web.Request) -> web.Response:
        script = await request.json()
        if not isinstance(script, list):
            return web.json_response({"error": "the script is a JSON list of actions"}, status=400)
        self.script = script
        return web.json_response({"ok": True})

    async def _h_clear(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ the provider endpoint

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        n = len(self.requests)
        action = self._action(n, body)
        rec = Recorded(n, request.method, request.path, dict(request.headers),
                       request.headers.get("Idempotency-Key"), body, text, time.monotonic(), action=action)
        self.requests.append(rec)
        await self._notify()
        try:
            return await self._answer(request, rec, action)
        except asyncio.CancelledError:
            self._end(rec, "cancelled")
            raise
        finally:
            if rec.finished is None:
                self._end(rec, "answered")

    def _end(self, rec: Recorded, how: str) -> None:
        rec.finished = how
        rec.ended_at = time.monotonic()
        t = asyncio.get_running_loop().create_task(self._notify())
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _answer(self, request: web.Request, rec: Recorded, a: Action) -> web.StreamResponse:
        if a.get("hang"):
            await asyncio.get_running_loop().create_future()      # ends when the client goes away
        if a.get("hold"):
            await self._released.wait()
        if a.get("delay"):
            await asyncio.sleep(float(a["delay"]))
        transport = request.transport
        if a.get("reset") or a.get("garbage") or a.get("truncated"):
            assert transport is not None
            if a.get("reset"):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                how = "reset"
            elif a.get("garbage"):
                transport.write(b"THIS IS NOT HTTP \x00\xff\r\n\r\n")
                how = "garbage"
            else:
                transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 1000\r\n\r\n{\"id\": \"trunc")
                how = "truncated"
            transport.close()
            self._end(rec, how)
            # the connection is gone: hand aiohttp a response it will fail to write, quietly
            raise _Gone()
        headers = {str(k): str(v) for k, v in (a.get("headers") or {}).items()}
        if a.get("retry_after") is not None:
            headers["Retry-After"] = str(a["retry_after"])
        status = int(a.get("status", 200))
        body = a.get("body")
        if body is None:
            resp: web.StreamResponse = web.json_response({"ok": 200 <= status < 300, "n": rec.n},
                                                         status=status, headers=headers)
        elif isinstance(body, str):
            resp = web.Response(text=body, status=status, headers=headers)
        else:
            resp = web.json_response(body, status=status, headers=headers)
        if a.get("receipt") and isinstance(rec.json, dict) and rec.json.get("attempt_id"):
            t = asyncio.get_running_loop().create_task(
                self._send_receipt(str(rec.json["attempt_id"]), str(a["receipt"]), float(a.get("receipt_delay", 0))))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
        return resp

    async def _send_receipt(self, attempt_id: str, status: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.receipt_url:
            return
        raw = json.dumps({"attempt_id": attempt_id, "status": status}).encode()
        headers = {"Content-Type": "application/json"}
        if self.receipt_secret:
            headers["X-Routingd-Signature"] = sign(self.receipt_secret, raw)
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=10))
        entry: dict[str, Any] = {"attempt_id": attempt_id, "status": status}
        try:
            async with self._session.post(self.receipt_url, data=raw, headers=headers) as resp:
                entry["http_status"] = resp.status
        except Exception as e:  # noqa: BLE001 - recorded for the test to look at
            entry["error"] = f"{type(e).__name__}: {e}"
        self.receipts_sent.append(entry)


class _Gone(web.HTTPException):
    """Raised after the stand-in closed the connection itself (reset/garbage/truncated)."""

    status_code = 599

    def __init__(self) -> None:
        super().__init__()


async def _serve(args: argparse.Namespace) -> None:
    script: Script = json.loads(args.script) if args.script else None
    if args.bucket:
        rate, _, burst = args.bucket.partition(",")
        script = TokenBucket(float(rate), float(burst or rate))
    standin = ProviderStandin(script, receipt_url=args.receipt_url, receipt_secret=args.receipt_secret,
                              port=args.port)
    await standin.start()
    print(standin.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await standin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A scriptable HTTP provider stand-in on 127.0.0.1.")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one; printed)")
    p.add_argument("--script", default=None, help="JSON list of actions, one per request; the last repeats")
    p.add_argument("--bucket", default=None, metavar="RATE,BURST",
                   help="answer as a vendor's rate limit: a token bucket (RATE/s, BURST deep), 429 above it")
    p.add_argument("--receipt-url", default=None)
    p.add_argument("--receipt-secret", default=None)
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
