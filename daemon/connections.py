"""Connection limits of the HTTP listener: header, idle and body timeouts and a connection cap.

aiohttp's server keeps a connection open as long as its client wants: one that never sends a
request, sends its headers a byte at a time or its body very slowly holds a file descriptor
forever, and enough of them lock valid clients out (docs/security.md). `ConnectionGuard` is the
protocol factory given to `loop.create_server()`: each connection's aiohttp RequestHandler (made
by the aiohttp `web.Server`, as TCPSite would) is wrapped in a `GuardedConnection` that

- closes it when it has no request for `idle_timeout` (from its start or its last answer);
- closes it when a request's line and headers have not all arrived `header_timeout` after the
  request's first byte;
- counts it against `max_connections`: past the cap the connection that has waited longest for a
  request (idle, or still sending its headers) is closed to make room; when every connection is
  busy with a request, the new one is answered 503 and closed.

The body timeout is the handler's (daemon/api/guard.py `read_body`): a request is busy from its
handler's start, which the API middleware reports with `request_started()`/`request_done()`.
The limits are `[daemon] header_timeout`, `idle_timeout`, `body_timeout`, `max_connections`
(docs/configuration.md); `configure()` applies a reload to connections made from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger("routingd.http")

_REFUSAL_BODY = b'{"error":"routingd is at its connection limit ([daemon] max_connections); retry later","details":[]}'
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)
_LOG_EVERY_S = 10.0


class ConnectionGuard:
    """The listener's protocol factory; `make_handler()` gives aiohttp's protocol for one
    connection (an aiohttp `web.Server` is such a callable)."""

    def __init__(self, make_handler: Callable[[], Any], *, header_timeout_s: float, idle_timeout_s: float,
                 max_connections: int, on_close: Callable[[str], Any] | None = None) -> None:
        self._make_handler = make_handler
        self._on_close = on_close       # e.g. the routingd_http_connections_closed_total counter
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.open: set[GuardedConnection] = set()
        # connections without a request in progress, the one waiting longest first
        self.waiting: OrderedDict[GuardedConnection, None] = OrderedDict()
        self.closed: dict[str, int] = {"idle": 0, "header": 0, "evicted": 0, "refused": 0}
        self._logged: dict[str, tuple[float, int]] = {}

    def configure(self, settings: Any) -> None:
        """[daemon] header_timeout / idle_timeout (ms) and max_connections, e.g. after a reload."""
        self.header_timeout_s = settings.header_timeout / 1000.0
        self.idle_timeout_s = settings.idle_timeout / 1000.0
        self.max_connections = settings.max_connections

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self, self._make_handler())

    def count(self, reason: str) -> None:
        """Count a connection closed for `reason`; one log line per reason at most every 10 s."""
        self.closed[reason] += 1
        if self._on_close is not None:
            self._on_close(reason)
        now = time.monotonic()
        last, seen = self._logged.get(reason, (0.0, 0))
        if now - last >= _LOG_EVERY_S:
            n = self.closed[reason] - seen
            what = {"idle": f"without a request for idle_timeout ({self.idle_timeout_s:g}s)",
                    "header": f"whose request headers did not arrive within header_timeout ({self.header_timeout_s:g}s)",
                    "evicted": f"waiting for a request, to make room at max_connections ({self.max_connections})",
                    "refused": f"new, at max_connections ({self.max_connections}) with every connection busy"}[reason]
            log.warning("closed %d connection(s) %s", n, what)
            self._logged[reason] = (now, self.closed[reason])


class GuardedConnection(asyncio.Protocol):
    """One connection: aiohttp's RequestHandler (`inner`) behind the guard's timers."""

    __slots__ = ("guard", "inner", "transport", "busy", "refused", "_timer", "_receiving")

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0                   # requests whose handler runs
        self.refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._receiving = False         # bytes of a request came, its handler has not started

    # -- asyncio.Protocol, forwarded to aiohttp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        guard = self.guard
        if len(guard.open) >= guard.max_connections:
            if guard.waiting:
                oldest = next(iter(guard.waiting))
                guard.count("evicted")
                oldest.close()
            else:
                self.refused = True
                guard.count("refused")
                transport.write(_REFUSAL)
                transport.close()
                return
        guard.open.add(self)
        self.inner.connection_made(transport)
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy and not self._receiving:
            # the first byte of a request: its headers are due within header_timeout
            self._receiving = True
            self._arm(self.guard.header_timeout_s, "header")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        guard = self.guard
        guard.open.discard(self)
        guard.waiting.pop(self, None)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    # -- the API middleware's reports

    def request_started(self) -> None:
        self.busy += 1
        self._receiving = False
        self._cancel()
        self.guard.waiting.pop(self, None)

    def request_done(self) -> None:
        self.busy -= 1
        if not self.busy and self.transport is not None and not self.transport.is_closing():
            self._wait_for_request()

    # -- internals

    def _wait_for_request(self) -> None:
        self._receiving = False
        self.guard.waiting[self] = None
        self.guard.waiting.move_to_end(self)
        self._arm(self.guard.idle_timeout_s, "idle")

    def _arm(self, delay_s: float, reason: str) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expired, reason)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, reason: str) -> None:
        self._timer = None
        if self.busy or self.transport is None or self.transport.is_closing():
            return
        self.guard.count(reason)
        self.close()

    def close(self) -> None:
        self._cancel()
        self.guard.waiting.pop(self, None)
        self.guard.open.discard(self)       # its room is free now, not at connection_lost
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def connection_of(transport: asyncio.BaseTransport | None) -> GuardedConnection | None:
    """The guard of a request's connection (None when it is not served through a guard)."""
    if transport is None:
        return None
    proto = transport.get_protocol()
    return proto if isinstance(proto, GuardedConnection) else None
