"""Outbound rate limits in a real daemon against a vendor stand-in that enforces a real token bucket.

The stand-in (tests/provider_standin.py with its TokenBucket script) answers 429 with a
Retry-After to any request above its bucket. Where the call leaves, the adapter of a limited
provider paces it once more (core/limiter.py Pacer): the store commits the rows of many granted
slots at once, and their calls must not leave together. A burst of messages at a `rate_limit` equal to the stand-in's
rate gets no 429 at all and every message is delivered (docs/configuration.md "Rate limits and
priorities"). The stand-in's bucket holds more than the daemon's `burst`: requests sent at the
limit reach it with the network's jitter, which a bucket exactly as deep would count against
them; the rate itself, the thing under test, is the same.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import aiohttp
import pytest

from daemon_process import DaemonProcess, StandinLoop, serving, wait_until
from provider_standin import ProviderStandin, TokenBucket
from routingd.daemon import providers as _providers  # noqa: F401 - registers the http adapter
from routingd.daemon.adapters import AdapterContext, AttemptRequest, build_adapter
from routingd.daemon.core.policy import parse_policy

RATE = 100.0                # per second, the stand-in's and the daemon's
DAEMON_BURST = 5
STANDIN_BURST = 30          # the daemon's burst plus a quarter second of jitter at RATE
MESSAGES = 200
SENDERS = 16                # the burst is sent on this many connections at once


CONFIG = """
version = 1
[daemon]
grace = "200ms"
[timeouts]
provider = "20s"
channel = "2m"
message = "3m"
[providers.vendor]
type = "http"
url = "{url}"
rate_limit = "{rate}/s"
burst = {burst}
retries = 5
backoff = {{ base = "100ms", max = "1s" }}
[channels.email]
providers = ["vendor"]
[routes.default]
channels = ["email"]
"""


@pytest.fixture()
def world(tmp_path: Any, standins: StandinLoop) -> Iterator[tuple[DaemonProcess, Any, TokenBucket]]:
    bucket = TokenBucket(RATE, STANDIN_BURST)
    s = standins.standin(bucket)
    text = CONFIG.format(url=s.url, rate=int(RATE), burst=DAEMON_BURST)
    with serving(DaemonProcess(tmp_path, text)) as d:
        yield d, s, bucket


def test_a_burst_at_the_vendors_rate_gets_no_429_and_every_message_is_delivered(
        world: tuple[DaemonProcess, Any, TokenBucket], standins: StandinLoop) -> None:
    d, s, bucket = world
    msg = {"to": {"email": "a@example.com"}, "content": {"title": "t", "body": "x"}}
    t0 = time.monotonic()
    with ThreadPoolExecutor(SENDERS) as pool:
        ids = list(pool.map(lambda _: d.send(msg), range(MESSAGES)))
    sending_s = time.monotonic() - t0
    # bounded: the burst takes MESSAGES / RATE seconds at the limit; allow the machine's load
    standins.call(s.wait_for(MESSAGES, timeout=60, finished=True), timeout=70)
    for mid in ids:
        assert d.wait_status(mid, "delivered", timeout=30)["status"] == "delivered"
    assert bucket.limited == 0, f"{bucket.limited} requests were above the vendor's bucket"
    assert len(s.requests) == MESSAGES          # each message once: no 429, so no retry
    # the daemon held messages back: while the burst was being sent, at most `burst` + RATE per
    # second of it could go out at once; every other message waited its turn (a busy machine
    # that accepts the burst slowly leaves fewer to queue, never more)
    queued = sum(1 for mid in ids if any(e["type"] == "attempt_queued" for e in d.status(mid)["events"]))
    assert queued >= MESSAGES - DAEMON_BURST - RATE * sending_s - 1, (queued, sending_s)
    wait_until(lambda: "routingd_provider_queue_depth" in d.metrics_text(), timeout=10, what="the queue metric")


def test_the_adapter_of_a_limited_provider_paces_calls_that_leave_together() -> None:
    """Calls handed to the adapter at the same moment (as after one commit of many granted slots)
    leave no faster than the provider's rate: after the burst, one per 1/rate (a lower bound on
    the time they take, which a busy machine can only lengthen)."""
    rate, burst, calls = 20.0, 2, 6
    req = {"message_id": "m1", "channel": "email", "provider": "vendor", "try_no": 1, "deadline_s": 30.0,
           "idempotency_key": "m1:email:vendor", "to": {"email": "a@example.com"},
           "content": {"title": "t", "body": "x"}, "metadata": {}}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with ProviderStandin() as s, aiohttp.ClientSession() as http:
            policy = parse_policy(CONFIG.format(url=s.url, rate=int(rate), burst=burst), env={})
            adapter = build_adapter("vendor", policy.providers["vendor"], AdapterContext(http_session=http))
            t0 = loop.time()
            outs = await asyncio.wait_for(asyncio.gather(*(
                adapter.send(AttemptRequest(attempt_id=f"m1.{i}", **req)) for i in range(calls))), 30)
            assert [o.status for o in outs] == [200] * calls
            assert len(s.requests) == calls
            return loop.time() - t0

    assert asyncio.run(main()) >= (calls - burst) / rate
