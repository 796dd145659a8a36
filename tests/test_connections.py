"""Connections time out and are capped (issue 24.7), on a real `routingd serve` with real sockets:
an idle connection is closed after [daemon] idle_timeout, a request whose headers trickle in
after header_timeout, one whose body trickles in after body_timeout (408), and past
max_connections the connection waiting longest for a request makes room, or a new one is
refused 503 when every connection is busy -- while valid sends still get through.

Short timeouts are configured; every wait is on state (a closed socket, a metric) with a bound."""

from __future__ import annotations

import json
import socket
import time
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from daemon_process import DaemonProcess, serving, wait_until

SEND = json.dumps({"message": {"to": {"email": "a@example.com"}}}).encode()

CONFIG = """
version = 1
[daemon]
grace = "200ms"
{daemon}
[providers.mail]
type = "sandbox"
[channels.email]
providers = ["mail"]
[routes.default]
channels = ["email"]
"""


def connect(d: DaemonProcess) -> socket.socket:
    u = urlsplit(d.url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    return s


def closed_by_peer(s: socket.socket, bound_s: float = 15.0) -> bytes:
    """Read until the daemon closes the connection (b"" or a reset); what it sent before. Fails
    after bound_s: the daemon never closed it."""
    got = b""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        except socket.timeout:
            break
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the daemon did not close the connection within {bound_s}s (got {got[:200]!r})")


def trickle_until_closed(s: socket.socket, data: bytes, bound_s: float = 15.0) -> bytes:
    """Send data a byte every 50 ms (a slow client) until the daemon closes; what it answered."""
    end = time.monotonic() + bound_s
    got = b""
    for b in data:
        if time.monotonic() > end:
            break
        try:
            s.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            return got + closed_by_peer(s, 2)
        s.settimeout(0.05)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
        return got + closed_by_peer(s, 5)
    raise AssertionError(f"the daemon took {len(data)} trickled bytes without closing")


def closed(d: DaemonProcess, reason: str) -> float:
    return d.metric("routingd_http_connections_closed_total", {"reason": reason}) or 0.0


def send_ok(d: DaemonProcess) -> int:
    return d.request("POST", "/v1/send", body=SEND, headers={"Content-Type": "application/json"}).status


@pytest.fixture(scope="module")
def timeouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    cfg = CONFIG.format(daemon='header_timeout = "400ms"\nidle_timeout = "700ms"\nbody_timeout = "400ms"')
    with serving(DaemonProcess(tmp_path_factory.mktemp("timeouts"), cfg)) as d:
        yield d


def test_an_idle_connection_is_closed_after_idle_timeout(timeouts: DaemonProcess) -> None:
    d = timeouts
    before = closed(d, "idle")
    with connect(d) as s:                       # never sends anything
        assert closed_by_peer(s) == b""
    with connect(d) as s:                       # one request, kept alive, then nothing
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = closed_by_peer(s)
        assert answer.startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: closed(d, "idle") >= before + 2, what="two idle closes counted")


def test_headers_trickling_in_are_cut_at_header_timeout(timeouts: DaemonProcess) -> None:
    d = timeouts
    before = closed(d, "header")
    headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 4000 + b"\r\n\r\n"
    with connect(d) as s:
        # a byte every 50 ms: never idle for idle_timeout, the headers never complete in time
        assert trickle_until_closed(s, headers) == b""
    wait_until(lambda: closed(d, "header") >= before + 1, what="a header timeout counted")
    assert send_ok(d) == 202


@pytest.mark.parametrize("path", ["/v1/send", "/send"])     # Courier's /send reads its body the same way
def test_a_body_trickling_in_is_answered_408_at_body_timeout_and_closed(timeouts: DaemonProcess, path: str) -> None:
    d = timeouts
    body = b'{"message": {"to": {"email": "a@example.com"}, "content": {"body": "' + b"x" * 4000 + b'"}}}'
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with connect(d) as s:
        s.sendall(head)
        answer = trickle_until_closed(s, body)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"body_timeout" in answer
    assert d.metric("routingd_messages_accepted_total") in (None, 0.0) or send_ok(d) == 202


CAP = 4


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    # long timeouts: here only the cap closes connections
    cfg = CONFIG.format(daemon=f'max_connections = {CAP}\nheader_timeout = "60s"\nidle_timeout = "60s"\n'
                               'body_timeout = "60s"')
    with serving(DaemonProcess(tmp_path_factory.mktemp("capped"), cfg)) as d:
        yield d


def send_status(d: DaemonProcess) -> int | None:
    """A valid send's status; None when the connection was refused by a reset."""
    try:
        return send_ok(d)
    except (ConnectionError, OSError):
        return None


def test_past_max_connections_the_longest_waiting_makes_room_and_sends_still_work(capped: DaemonProcess) -> None:
    """No metric is read while the cap matters (a scrape is a connection too). The daemon accepts
    connections in the order they were made, so the first one is the longest waiting."""
    d = capped
    idle = [connect(d) for _ in range(CAP)]
    partial = connect(d)                                # the fifth: the oldest idle one makes room
    partial.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert closed_by_peer(idle[0]) == b""
    # a valid send on a new connection while the cap is full of waiting connections
    assert send_ok(d) == 202
    assert closed_by_peer(idle[1]) == b""
    for s in idle + [partial]:
        s.close()
    assert closed(d, "evicted") >= 2

    # every connection busy with a request (a body announced, not sent): a new one is refused 503
    busy = []
    for _ in range(CAP):
        s = connect(d)
        s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n")
        # "100 Continue" comes from the handler's start: the daemon counts it busy from then on
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"{")
        busy.append(s)
    with connect(d) as s:
        answer = closed_by_peer(s)
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert b"max_connections" in answer and b"Retry-After: 1" in answer
    busy.pop().close()                                  # one busy client goes away: room again
    status: list[int | None] = []
    wait_until(lambda: status.append(send_status(d)) or status[-1] == 202, what="a send accepted")
    assert set(status) <= {None, 503, 202}, status
    for s in busy:
        s.close()
    assert closed(d, "refused") >= 1
