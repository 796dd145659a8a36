"""Outbound rate limits in a real daemon against a vendor stand-in that enforces a real token bucket.

The stand-in (tests/provider_standin.py, a callable script) answers 429 with a Retry-After to
any request above its bucket. A burst of messages at a `rate_limit` equal to the stand-in's
rate gets no 429 at all and every message is delivered (docs/configuration.md "Rate limits and
priorities"). The stand-in's bucket holds more than the daemon's `burst`: requests sent at the
limit reach it with the network's jitter, which a bucket exactly as deep would count against
them; the rate itself, the thing under test, is the same.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest

from daemon_process import DaemonProcess, StandinLoop, serving, wait_until

RATE = 40.0                 # per second, the stand-in's and the daemon's
DAEMON_BURST = 5
STANDIN_BURST = 15          # the daemon's burst plus a quarter second of jitter at RATE
MESSAGES = 160


class VendorBucket:
    """The vendor's limit: a token bucket over the requests' arrival times."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()
        self.lock = threading.Lock()
        self.limited = 0

    def __call__(self, _n: int, _body: Any) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return {"status": 200}
            self.limited += 1
            return {"status": 429, "retry_after": 1}


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
def world(tmp_path: Any, standins: StandinLoop) -> Iterator[tuple[DaemonProcess, Any, VendorBucket]]:
    bucket = VendorBucket(RATE, STANDIN_BURST)
    s = standins.standin(bucket)
    text = CONFIG.format(url=s.url, rate=int(RATE), burst=DAEMON_BURST)
    with serving(DaemonProcess(tmp_path, text)) as d:
        yield d, s, bucket


def test_a_burst_at_the_vendors_rate_gets_no_429_and_every_message_is_delivered(
        world: tuple[DaemonProcess, Any, VendorBucket], standins: StandinLoop) -> None:
    d, s, bucket = world
    ids = [d.send({"to": {"email": "a@example.com"}, "content": {"title": "t", "body": "x"}})
           for _ in range(MESSAGES)]
    # bounded: the burst takes MESSAGES / RATE seconds at the limit; allow the machine's load
    standins.call(s.wait_for(MESSAGES, timeout=60, finished=True), timeout=70)
    for mid in ids:
        assert d.wait_status(mid, "delivered", timeout=30)["status"] == "delivered"
    assert bucket.limited == 0, f"{bucket.limited} requests were above the vendor's bucket"
    assert len(s.requests) == MESSAGES          # each message once: no 429, so no retry
    # the daemon did hold messages back: most of the burst waited its turn
    queued = sum(1 for mid in ids if any(e["type"] == "attempt_queued" for e in d.status(mid)["events"]))
    assert queued >= MESSAGES // 2
    wait_until(lambda: "routingd_provider_queue_depth" in d.metrics_text(), timeout=10, what="the queue metric")
