"""Delivery through the twilio and slack provider types vs a raw aiohttp client making the same request.

Each vendor's loopback stand-in (tests/vendor_standins.py: it checks auth, encoding and required
fields and answers the vendor's documented success body) runs in a child process of its own, so
its CPU is not charged to either side. In this process, in the same run, alternating rounds:

  subject   routingd's adapter: `send(AttemptRequest)` of a provider built from routing.toml, on
            the process's shared aiohttp session (what the runtime runs for every attempt:
            building the vendor request, reading and mapping the answer onto an Outcome);
  baseline  a raw aiohttp client on an identical session POSTing the same request (same URL,
            auth header, form/JSON body) and checking the answer's success field.

Both keep --concurrency requests in flight for --count messages per round; every answer must be
a success. The rate is messages per second; the verdict is the best subject round over the best
baseline round (target >= 0.5x). The daemon's ingress and store are measured by bench_ingress and
bench_delivery, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import sys
import time
from typing import Any, Awaitable, Callable

from common import ROOT, BenchResult, header, ratio

sys.path.insert(0, str(ROOT / "tests"))

SID, TOKEN = "AC" + "b" * 32, "bench-twilio-token"
SLACK_TOKEN = "xoxb-bench-token"
TARGET = 0.5


def _serve(kind: str, conn: Any) -> None:
    """Child process: one stand-in on 127.0.0.1 until the parent says stop."""
    sys.path.insert(0, str(ROOT / "tests"))
    from vendor_standins import SlackStandin, TwilioStandin

    async def main() -> None:
        s: Any = TwilioStandin(SID, TOKEN) if kind == "twilio" else SlackStandin(token=SLACK_TOKEN)
        await s.start()
        s.requests = _Discard()                       # keep no per-request records: a long run stays flat
        conn.send(s.url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)
        await s.close()

    asyncio.run(main())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _: Any) -> None:
        pass


async def _rate(send_one: Callable[[int], Awaitable[bool]], count: int, concurrency: int) -> float:
    next_i = iter(range(count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for i in next_i:
            if not await send_one(i):
                failures += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{failures} of {count} sends did not succeed")
    return count / elapsed


async def _pair(kind: str, url: str, count: int, concurrency: int, rounds: int) -> tuple[list[float], list[float]]:
    from routingd.daemon.adapters import AdapterContext, AttemptRequest, build_adapter
    from routingd.daemon.core.policy import parse_policy
    from routingd.daemon.providers import make_http_session

    if kind == "twilio":
        block = f'type = "twilio"\naccount_sid = "{SID}"\nauth_token = "{TOKEN}"\nfrom = "+15017122661"\nbase_url = "{url}"'
        to: dict[str, Any] = {"phone_number": "+15558675310"}
    elif kind == "slack-webhook":
        block = f'type = "slack"\nwebhook_url = "{url}/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"'
        to = {"user_id": "u1"}
    else:
        block = f'type = "slack"\ntoken = "{SLACK_TOKEN}"\nchannel = "#general"\nbase_url = "{url}/api"'
        to = {"user_id": "u1"}
    policy = parse_policy(f'[providers.p]\n{block}\n[channels.c]\nproviders = ["p"]\n[routes.default]\nchannels = ["c"]\n')
    subject_session, raw_session = make_http_session(), make_http_session()
    adapter = build_adapter("p", policy.providers["p"], AdapterContext(http_session=subject_session))
    text = "db1 is at 97% disk"

    async def subject(i: int) -> bool:
        req = AttemptRequest(message_id=f"m{i}", attempt_id=f"m{i}.0.1", channel="c", provider="p", try_no=1,
                             deadline_s=10.0, idempotency_key=f"m{i}:c:p", to=to,
                             content={"title": "Disk", "body": text})
        o = await adapter.send(req)
        return o.status is not None and 200 <= o.status < 300

    basic = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()

    async def raw(i: int) -> bool:
        if kind == "twilio":
            async with raw_session.post(f"{url}/2010-04-01/Accounts/{SID}/Messages.json",
                                        data={"To": "+15558675310", "Body": text, "From": "+15017122661"},
                                        headers={"Authorization": basic, "Accept": "application/json"}) as r:
                return r.status == 201 and bool((await r.json()).get("sid"))
        if kind == "slack-webhook":
            async with raw_session.post(f"{url}/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                                        json={"text": text}) as r:
                return r.status == 200 and await r.text() == "ok"
        async with raw_session.post(f"{url}/api/chat.postMessage", json={"channel": "#general", "text": text},
                                    headers={"Authorization": f"Bearer {SLACK_TOKEN}"}) as r:
            return r.status == 200 and (await r.json()).get("ok") is True

    subj: list[float] = []
    base: list[float] = []
    try:
        await _rate(raw, min(200, count), concurrency)         # warm both pools and the stand-in
        await _rate(subject, min(200, count), concurrency)
        for _ in range(rounds):
            base.append(await _rate(raw, count, concurrency))
            subj.append(await _rate(subject, count, concurrency))
    finally:
        await subject_session.close()
        await raw_session.close()
    return subj, base


def run(count: int = 2000, concurrency: int = 32, rounds: int = 3) -> BenchResult:
    res = BenchResult("providers-msg")
    header("providers-msg: twilio / slack adapters vs a raw aiohttp client, same stand-ins, same run")
    ctx = multiprocessing.get_context("spawn")
    t_start = time.perf_counter()
    for kind, server in (("twilio", "twilio"), ("slack-webhook", "slack"), ("slack-api", "slack")):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(server, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(30):
                raise RuntimeError(f"the {server} stand-in did not start")
            url = parent.recv()
            subj, base = asyncio.run(asyncio.wait_for(_pair(kind, url, count, concurrency, rounds), 600))
        finally:
            parent.send("stop")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        res.say(f"{kind:14s} {'routingd':10s}" + "  ".join(f"{r:7.0f}" for r in subj) + "  msg/s")
        res.say(f"{kind:14s} {'raw client':10s}" + "  ".join(f"{r:7.0f}" for r in base) + "  msg/s")
        res.figures[kind] = {"routingd": subj, "raw": base}
        res.check(f"{kind} deliveries/s routingd / raw aiohttp client", ratio(max(subj), max(base)), TARGET)
    res.wall_s = time.perf_counter() - t_start
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=2000, help="messages per round and side (default 2000)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (default 3)")
    a = p.parse_args()
    return 0 if run(a.count, a.concurrency, a.rounds).ok else 1


if __name__ == "__main__":
    sys.exit(main())
