"""Delivery through a real local HTTP provider: routingd's `http` provider vs a bare relay.

Both sides deliver to the same minimal aiohttp sink (benchmarks/sink.py, answers 200 at once):
  subject   `routingd serve` with one `http` provider pointing at the sink;
  baseline  benchmarks/bare_server.py --forward: parse the JSON, POST it to the sink on one
            shared ClientSession, answer 202 (no validation, no durability, no routing).
Two phases per side:
  throughput  wrk (same settings as the ingress benchmark); deliveries/s = messages delivered
              to the sink / (wrk's duration + the time to drain routingd's in-flight messages);
  overhead    a paced client (--rate msg/s for --count messages, one at a time, no queueing);
              routing overhead = the sink's arrival time - the client's send time (p50/p99), and
              for routingd also the sink's arrival - the stored accepted_at (after the durable
              commit the 202 waits for). Same machine, so time.time() is one clock.
No target: the figures and ratios are informational.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (BENCH, BenchResult, Helper, WrkSettings, finished_counts, header, ms, percentile, ratio,
                    run_wrk, send_body, start_daemon, wait_drained)

DRAIN_TIMEOUT_S = 60.0

CONFIG = """\
# benchmarks/bench_delivery.py: one real HTTP provider (the local sink)
version = 1

[daemon]
max_inflight = 1000000

[timeouts]
provider = "10s"
channel = "20s"
message = "1m"

[providers.sink]
type = "http"
url = "{url}"

[channels.email]
providers = ["sink"]
requires = "email"

[routes.default]
channels = ["email"]
"""


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str) -> None:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


async def _paced(url: str, count: int, rate: float) -> tuple[dict[int, float], dict[int, str], int]:
    """POST `count` messages at `rate`/s; (seq -> send time, seq -> message_id, failures)."""
    import aiohttp

    sent: dict[int, float] = {}
    ids: dict[int, str] = {}
    failures = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        t0 = time.monotonic()

        async def one(i: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            body = send_body(seq=i)
            sent[i] = time.time()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                data = await r.read()
                if r.status == 202:
                    ids[i] = json.loads(data)["message_id"]
                else:
                    failures += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return sent, ids, failures


def _arrivals(sink_url: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for key, t in _get_json(sink_url + "/_dump"):
        out.setdefault(key, t)          # the first arrival (a retry would be a second)
    return out


def _overhead(sent: dict[int, float], arrived: dict[Any, float]) -> list[float]:
    return [arrived[i] - t for i, t in sent.items() if i in arrived]


def run(settings: WrkSettings, count: int = 300, rate: float = 100.0, workdir: Path | None = None) -> BenchResult:
    header(f"delivery through a local HTTP sink: {settings.describe()}; overhead at {rate:g} msg/s x {count}")
    res = BenchResult("delivery")
    t_start = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="routingd-bench-delivery-"))
    with Helper([str(BENCH / "sink.py")], work, "sink") as sink:
        target = sink.url + "/send"
        # ---- baseline: bare relay
        with Helper([str(BENCH / "bare_server.py"), "--forward", target], work, "bare-relay") as relay:
            base = run_wrk(relay.url + "/v1/send", settings, send_body(), work / "wrk-relay.txt")
            base_delivered = len(_get_json(sink.url + "/_dump"))
            _post(sink.url + "/_clear")
            b_sent, _, b_fail = asyncio.run(_paced(relay.url + "/v1/send", count, rate))
            b_over = _overhead(b_sent, _arrivals(sink.url))
            _post(sink.url + "/_clear")
        base_rate = base_delivered / base.duration_s if base.duration_s else 0.0
        res.say(f"baseline bare relay: {base_rate:7.0f} deliveries/s ({base_delivered} in {base.duration_s:.1f}s); "
                f"send->sink p50 {ms(percentile(b_over, 50))} p99 {ms(percentile(b_over, 99))}"
                + (f"; {b_fail} failed" if b_fail else ""))

        # ---- subject: routingd with an http provider
        d = start_daemon(work / "daemon", CONFIG.format(url=target))
        try:
            sub = run_wrk(d.url + "/v1/send", settings, send_body(), work / "wrk-routingd.txt")
            drained, drain_s = wait_drained(d, DRAIN_TIMEOUT_S)
            counts = finished_counts(d)
            sink_n = len(_get_json(sink.url + "/_dump"))
            _post(sink.url + "/_clear")
            s_sent, s_ids, s_fail = asyncio.run(_paced(d.url + "/v1/send", count, rate))
            wait_drained(d, DRAIN_TIMEOUT_S)
            s_arr = _arrivals(sink.url)
        finally:
            d.stop(timeout=30) if d.running else None
            d.close()
        s_over = _overhead(s_sent, s_arr)
        accepted_at: dict[str, float] = {}
        con = sqlite3.connect(f"file:{d.state_path}?mode=ro", uri=True, timeout=10)
        try:
            for mid, at in con.execute("SELECT id, accepted_at FROM messages"):
                accepted_at[mid] = at
        finally:
            con.close()
        internal = [s_arr[i] - accepted_at[mid] for i, mid in s_ids.items() if i in s_arr and mid in accepted_at]
        elapsed = sub.duration_s + drain_s
        sub_rate = counts["delivered"] / elapsed if elapsed else 0.0
        res.say(f"routingd http:       {sub_rate:7.0f} deliveries/s ({counts['delivered']:.0f} delivered, sink saw "
                f"{sink_n}, in {sub.duration_s:.1f}s load + {drain_s:.2f}s drain"
                + ("" if drained else ", NOT drained") + f"); ingress {sub.accepted_per_s:.0f} req/s")
        res.say(f"routingd overhead:   send->sink p50 {ms(percentile(s_over, 50))} p99 {ms(percentile(s_over, 99))}; "
                f"accepted_at->sink p50 {ms(percentile(internal, 50))} p99 {ms(percentile(internal, 99))}"
                + (f"; {s_fail} failed" if s_fail else ""))
    r_rate = ratio(sub_rate, base_rate)
    s50, s99 = percentile(s_over, 50), percentile(s_over, 99)
    b50, b99 = percentile(b_over, 50), percentile(b_over, 99)
    res.figures.update({
        "wrk": settings.describe(), "paced_rate": rate, "paced_count": count,
        "baseline_deliveries_per_s": round(base_rate, 1), "routingd_deliveries_per_s": round(sub_rate, 1),
        "baseline_send_to_sink_p50_ms": _r(b50), "baseline_send_to_sink_p99_ms": _r(b99),
        "routingd_send_to_sink_p50_ms": _r(s50), "routingd_send_to_sink_p99_ms": _r(s99),
        "routingd_accept_to_sink_p50_ms": _r(percentile(internal, 50)),
        "routingd_accept_to_sink_p99_ms": _r(percentile(internal, 99)),
        "added_p50_ms": _r(None if s50 is None or b50 is None else s50 - b50),
        "added_p99_ms": _r(None if s99 is None or b99 is None else s99 - b99),
        "drained": drained, "ratio": r_rate,
    })
    res.say(f"added routing latency (routingd - bare relay, send->sink): p50 "
            f"{ms(None if s50 is None or b50 is None else s50 - b50)}, p99 "
            f"{ms(None if s99 is None or b99 is None else s99 - b99)}")
    res.check("deliveries/s routingd / bare relay", r_rate, None)
    res.wall_s = time.monotonic() - t_start
    return res


def _r(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=8, help="wrk seconds per side (default 8)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--count", type=int, default=300, help="paced messages per side (default 300)")
    p.add_argument("--rate", type=float, default=100.0, help="paced messages per second (default 100)")
    a = p.parse_args()
    return 0 if run(WrkSettings(1, a.connections, a.duration), a.count, a.rate).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
