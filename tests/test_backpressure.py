"""Back-pressure on a live `routingd serve`: [daemon] max_inflight bounds the messages in flight;
past it POST /v1/send answers 503 with Retry-After (before reading the body), memory does not
grow with the flood, and once messages finish the daemon accepts again.

A provider stand-in that never answers keeps the accepted messages in flight; closing it (the
daemon sees its connections drop: a network failure) lets them fail over to the backup.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon_process import DaemonProcess, Response, StandinLoop, serving

LIMIT = 20

CONFIG = """
version = 1
[daemon]
max_inflight = {limit}
grace = "200ms"
[timeouts]
provider = "5m"
channel = "10m"
message = "20m"
[providers.stuck]
type = "http"
url = "{stuck}"
breaker = false
[providers.backup]
type = "http"
url = "{backup}"
[channels.email]
providers = ["stuck", "backup"]
[routes.default]
channels = ["email"]
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send(d: DaemonProcess, body: bytes) -> Response:
    return d.request("POST", "/v1/send", body=body, headers={"Content-Type": "application/json"})


def parallel(n: int, fn: object, threads: int = 8) -> list[Response]:
    """Run fn() n times on `threads` threads released together; the answers in any order."""
    out: list[Response] = []
    lock = threading.Lock()
    todo = list(range(n))
    go = threading.Barrier(threads)

    def worker() -> None:
        go.wait(10)
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            r = fn()  # type: ignore[operator]
            with lock:
                out.append(r)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DaemonProcess, StandinLoop, object, object]]:
    with StandinLoop() as loop:
        stuck = loop.standin([{"hang": True}])
        backup = loop.standin([{"status": 200}])
        with serving(DaemonProcess(tmp_path, CONFIG.format(limit=LIMIT, stuck=stuck.url, backup=backup.url))) as d:
            yield d, loop, stuck, backup


def test_past_max_inflight_send_is_503_with_retry_after_memory_stays_flat_then_recovers(world: tuple) -> None:
    d, loop, stuck, backup = world
    small = json.dumps({"message": {"to": {"email": "a@example.com"}}}).encode()

    # racing to the bound from 0: exactly LIMIT of 3 x LIMIT concurrent sends get in
    answers = parallel(3 * LIMIT, lambda: send(d, small))
    accepted = [r.json()["message_id"] for r in answers if r.status == 202]
    refused = [r for r in answers if r.status != 202]
    assert len(accepted) == LIMIT, [r.status for r in answers]
    for r in refused:
        assert r.status == 503 and r.json()["error"] and int(r.header("Retry-After") or "0") >= 1
    loop.call(stuck.wait_for(LIMIT))                   # every accepted message waits on the stuck provider
    assert d.metric("routingd_messages_inflight") == LIMIT

    # a flood past the bound: 1500 sends of 128 KiB each (~190 MB if anything kept them)
    big = json.dumps({"message": {"to": {"email": "a@example.com"},
                                  "content": {"body": "x" * (128 * 1024)}}}).encode()
    before = rss_kib(d.pid)
    flood = parallel(1500, lambda: send(d, big))
    after = rss_kib(d.pid)
    assert {r.status for r in flood} == {503}
    assert all(r.header("Retry-After") for r in flood)
    assert after - before < 32 * 1024, f"RSS grew from {before} to {after} KiB during the flood"
    assert d.metric("routingd_messages_accepted_total") == LIMIT
    assert d.metric("routingd_messages_inflight") == LIMIT
    print(f"\nback-pressure: limit {LIMIT}, flood 1500 x 128 KiB all 503, daemon RSS {before} -> {after} KiB")

    # the stuck provider goes away: its connections drop, the messages fail over and finish
    loop.call(stuck.close())
    for mid in accepted:
        st = d.wait_status(mid, "delivered", timeout=20)
        assert [a["provider"] for a in st["attempts"]] == ["stuck", "backup"]
    deadline = time.monotonic() + 10
    while d.metric("routingd_messages_inflight") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.metric("routingd_messages_inflight") == 0
    r = send(d, small)                                  # accepted again
    assert r.status == 202
    d.wait_status(r.json()["message_id"], "delivered")
