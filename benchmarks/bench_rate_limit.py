"""Outbound rate limit: a burst of messages into a real daemon whose one provider is a vendor
stand-in enforcing a real token bucket (issue 21).

The stand-in (tests/provider_standin.py --bucket RATE,BURST, a child process) answers 200 within
its bucket and 429 with Retry-After above it. routingd's `rate_limit` equals the stand-in's
rate; `--messages` messages (2,000) are POSTed at once (as fast as `--connections` connections
send them) and the benchmark waits until every one has finished. Printed:

  429s seen        requests the stand-in answered 429 (target 0: the limit kept the daemon under it)
  delivered        messages delivered (target: all of them)
  call rate        the rate at which the stand-in saw calls while a backlog waited, as a ratio of the
                   limit (target 1 +- 5%): measured over the calls after the last message was
                   accepted (the backlog drains one token at a time: (calls - 1) / their span). The
                   whole run's rate, (calls - burst) / (last call - first call), is printed too: it
                   is lower when the machine accepts the burst more slowly than the limit at times
  vendor depth     (info) the smallest bucket at the limit's rate that the calls as the stand-in saw
                   them fit into: the daemon's `burst` plus what the time between a slot and its call
                   reaching the vendor (commit, connection, scheduling) added to it

The stand-in's bucket is `--jitter` seconds of calls deeper than the daemon's `burst` (docs/
configuration.md "Rate limits and priorities": a call reaches the vendor some time after routingd
took its token, and that time varies; a bucket exactly as deep would count the variation against
the calls). Its rate, the thing measured, is the daemon's. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from common import ROOT, BenchError, BenchResult, Helper, finished_counts, header, start_daemon, wait_drained

CONFIG = """
version = 1
[daemon]
grace = "1s"
[timeouts]
provider = "10s"
channel = "5m"
message = "10m"
[providers.vendor]
type = "http"
url = "{url}"
rate_limit = "{rate:g}/s"
burst = {burst}
retries = 3
[channels.email]
providers = ["vendor"]
[routes.default]
channels = ["email"]
"""

BODY = json.dumps({"message": {"to": {"email": "a@example.com"}, "content": {"title": "t", "body": "rate limit"}}})


def needed_depth(times: Sequence[float], rate: float) -> float:
    """The smallest bucket depth at `rate` that accepts calls at `times` (sorted), each taking a token:
    max over i <= j of (j - i + 1) - rate * (t_j - t_i)."""
    best = 0.0
    low = float("inf")          # min over i <= j of i - rate * t_i
    for j, t in enumerate(times):
        low = min(low, j - rate * t)
        best = max(best, (j + 1) - rate * t - low)
    return best


async def _send_all(url: str, n: int, connections: int) -> tuple[list[str], list[str]]:
    """POST n messages on `connections` connections at once: (the accepted ids, errors)."""
    import aiohttp

    ids: list[str] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                async with http.post("/v1/send", data=BODY, headers={"Content-Type": "application/json"}) as r:
                    doc = await r.json(content_type=None)
                    if r.status == 202:
                        ids.append(doc["message_id"])
                    elif len(errors) < 5:
                        errors.append(f"POST /v1/send: {r.status}")

        await asyncio.gather(*(worker() for _ in range(connections)))
    return ids, errors


def _requests(base_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base_url}/_requests", timeout=30) as r:
        return json.loads(r.read())


def run(messages: int = 2000, rate: float = 25.0, burst: int = 10, jitter: float = 0.25,
        connections: int = 32) -> BenchResult:
    res = BenchResult("rate_limit")
    header(f"rate limit: {messages} messages at once, rate_limit {rate:g}/s = the vendor's")
    t0 = time.perf_counter()
    vendor_burst = burst + rate * jitter
    with tempfile.TemporaryDirectory(prefix="bench-rate-limit-") as tmp:
        work = Path(tmp)
        with Helper([str(ROOT / "tests" / "provider_standin.py"), "--port", "0", "--bucket", f"{rate},{vendor_burst}"],
                    work, "vendor") as vendor:
            daemon = start_daemon(work, CONFIG.format(url=f"{vendor.url}/send", rate=rate, burst=burst))
            try:
                s0 = time.monotonic()
                ids, errors = asyncio.run(_send_all(daemon.url, messages, connections))
                accepted = len(ids)
                sent_s = time.monotonic() - s0
                sent_end = time.monotonic()     # CLOCK_MONOTONIC: the stand-in's received_at is on the same clock
                if errors:
                    raise BenchError(f"the daemon refused sends: {'; '.join(errors)}")
                # bounded: the burst drains at `rate`; four times that and a minute for a busy machine
                drained, _ = wait_drained(daemon, timeout=4 * messages / rate + 60)
                counts = finished_counts(daemon)
                throttled_seen = daemon.metric("routingd_provider_throttled_total", {"provider": "vendor"}) or 0.0
            finally:
                daemon.stop()
                daemon.close()
            reqs = _requests(vendor.url)
    calls = sorted(r["received_at"] for r in reqs if r["action"].get("status") == 200)
    late = [r["received_at"] for r in reqs if r["action"].get("status") == 429]
    limited = len(late)
    during = sum(1 for t in late if t <= sent_end)
    # the backlog: the calls after the last message was accepted, when every call waited its turn
    backlog = [t for t in calls if t > sent_end]
    rate_backlog = (len(backlog) - 1) / (backlog[-1] - backlog[0]) if len(backlog) >= 2 * rate else None
    rate_all = (len(calls) - burst) / (calls[-1] - calls[0]) if len(calls) > burst + 1 else None
    depth = needed_depth(calls, rate) if calls else None
    res.say(f"sent       {accepted} accepted in {sent_s:.2f}s ({accepted / sent_s:.0f}/s, {connections} connections)")
    res.say(f"vendor     token bucket {rate:g}/s, {vendor_burst:g} deep; routingd rate_limit {rate:g}/s, burst {burst}")
    res.say(f"finished   {', '.join(f'{k} {v:g}' for k, v in counts.items())}" + ("" if drained else " (NOT drained)"))
    res.say(f"calls      {len(calls)} answered 200; {len(backlog)} of them after the sending ended (the backlog)")
    res.say(f"429s       {during} while the burst was being sent, {len(late) - during} after; "
            f"the daemon counted {throttled_seen:g}")
    if rate_all is not None:
        res.say(f"rate       whole run {rate_all:.2f}/s = {rate_all / rate:.3f}x the limit (ingress below "
                f"the limit at times lowers it); backlog " + ("-" if rate_backlog is None else f"{rate_backlog:.2f}/s"))
    res.figures.update({"messages": messages, "accepted": accepted, "rate_limit": rate, "burst": burst,
                        "vendor_burst": vendor_burst, "calls_200": len(calls), "vendor_429": limited,
                        "daemon_429_seen": throttled_seen, "delivered": counts.get("delivered"),
                        "rate_backlog": rate_backlog, "rate_all": rate_all, "vendor_depth_needed": depth,
                        "send_s": sent_s, "backlog_calls": len(backlog)})
    res.check("429s seen (vendor)", float(limited), 0.0, at_least=False, unit="")
    res.check("delivered", counts.get("delivered"), float(messages), unit="")
    ratio = None if rate_backlog is None else rate_backlog / rate
    res.check("call rate / limit, backlog (low)", ratio, 0.95)
    res.check("call rate / limit, backlog (high)", ratio, 1.05, at_least=False)
    res.check("vendor depth the calls needed", depth, None, unit="")
    res.wall_s = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--rate", type=float, default=25.0, help="the vendor's and routingd's rate, per second")
    p.add_argument("--burst", type=int, default=10, help="routingd's burst")
    p.add_argument("--jitter", type=float, default=0.25, help="seconds of calls the vendor's bucket is deeper")
    p.add_argument("--connections", type=int, default=32)
    a = p.parse_args(argv)
    try:
        r = run(a.messages, a.rate, a.burst, a.jitter, a.connections)
    except BenchError as e:
        print(f"bench_rate_limit: {e}", file=sys.stderr)
        return 2
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
