"""Breakers shared by the routingd processes of one PostgreSQL database (docs/scaling.md): the
LISTEN/NOTIFY transport (daemon/store/pg_notify.py) and the core's rule (Fleet.breaker_heard),
with two Routers in this process, each on its own SQLite store, and the notices through a real
PostgreSQL database of the session's cluster (a second daemon on one database waits for leases).

A breaker opening in one Router is skipped by the other (measured: the time from the first seeing
its breaker open to the second skipping the provider), its closing closes the other's, nothing
echoes back; a notice for a provider the policy lacks, and garbage on the channel, are ignored
and counted; the listener comes back after a database restart."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Awaitable, Callable

import psycopg
import pytest

from pg_cluster import PgCluster
from routingd.daemon.core.policy import parse_policy
from routingd.daemon.core.request import SendRequest
from routingd.daemon.metrics import Metrics
from routingd.daemon.runtime import Router
from routingd.daemon.shared_breakers import SharedBreakers
from routingd.daemon.store import Store
from routingd.daemon.store.pg_notify import CHANNEL, Notice, NoticeBus

POLICY = """
version = 1
[timeouts]
provider = "2s"
[providers.flaky]
type = "sandbox"
fail = "{fail}"
retries = 0
breaker = {{ failures = 2, cooldown = "{cooldown}" }}
[providers.backup]
type = "sandbox"
[channels.email]
providers = ["flaky", "backup"]
[routes.default]
channels = ["email"]
"""


def send() -> SendRequest:
    return SendRequest.model_validate({"message": {"to": {"email": "a@example.com"},
                                                   "content": {"title": "t", "body": "b"}}})


def heard(m: Metrics, result: str) -> float:
    return m.registry.get_sample_value("routingd_breaker_notices_heard_total", {"result": result}) or 0.0


async def until(cond: Callable[[], Any], what: str, timeout: float = 20.0, step: float = 0.002) -> float:
    """Wait for `cond` (bounded); return the loop time it was first seen true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(step)
    return loop.time()


async def a_router(stack: AsyncExitStack, path: Path, url: str, fail: str = "down",
                   cooldown: str = "1m") -> tuple[Router, SharedBreakers]:
    path.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    router = Router(parse_policy(POLICY.format(fail=fail, cooldown=cooldown), "routing.toml", env={}),
                    Store(str(path / "state.db")), metrics, rng_seed=1)
    await router.start()
    stack.push_async_callback(router.stop, 0.0)
    shared = SharedBreakers(router, url, metrics)
    router.add_event_listener(shared)
    await shared.start()
    stack.push_async_callback(shared.close)
    await asyncio.wait_for(shared.bus.listening.wait(), 20)
    return router, shared


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


def test_a_breaker_opening_in_one_process_is_skipped_by_the_other_and_its_closing_closes_it(
        tmp_path: Path, pg_url: str) -> None:
    latencies: list[float] = []

    async def main() -> None:
        async with AsyncExitStack() as stack:
            a, sa = await a_router(stack, tmp_path / "a", pg_url, cooldown="1s")
            # B's own cooldown (a policy version of its own) is long: only A's notice closes it
            b, sb = await a_router(stack, tmp_path / "b", pg_url, cooldown="10m")
            for _ in range(2):                           # two failures open flaky's breaker in A
                await a.submit(send())
            opened_a = await until(lambda: a.health.is_open("flaky"), "A's breaker opens")
            skipped_b = await until(lambda: b.health.blocks("flaky", b.clock.now()), "B skips flaky")
            latencies.append(skipped_b - opened_a)
            assert heard(b.metrics, "applied") == 1
            assert b.metrics.registry.get_sample_value("routingd_breaker_open", {"provider": "flaky"}) == 1
            # a message sent to B now goes straight to the backup: no attempt on flaky at all
            mid = (await b.submit(send())).message_id
            await until(lambda: (b.status(mid) or {}).get("status") != "pending", "B's message finishes", step=0.02)
            st = b.status(mid)
            assert st is not None and st["status"] == "delivered"
            assert [x["provider"] for x in st["attempts"]] == ["backup"]
            assert any(e["type"] == "provider_skipped" and e["reason"] == "breaker open" for e in st["events"])
            # Heard transitions are not told on: nothing came back to A.
            assert heard(a.metrics, "applied") + heard(a.metrics, "unchanged") == 0

            # flaky recovers: after A's cooldown its probe succeeds, its breaker closes, and B's
            # (open, with no message of its own to probe it) closes on that notice.
            a.swap_policy(parse_policy(POLICY.format(fail="none", cooldown="1s"), "routing.toml", env={}))
            for _ in range(200):                # bounded: sends until one, past the cooldown, probes
                await a.submit(send())
                if not a.health.is_open("flaky"):
                    break
                await asyncio.sleep(0.1)
            await until(lambda: not a.health.is_open("flaky"), "A's probe closes its breaker", step=0.02)
            await until(lambda: not b.health.is_open("flaky"), "B's breaker closes on A's notice")
            assert heard(b.metrics, "applied") == 2
            assert b.metrics.registry.get_sample_value("routingd_breaker_open", {"provider": "flaky"}) == 0
            assert sa.bus.dropped == 0 and sb.bus.dropped == 0

    run(main)
    print(f"breaker opened in A -> skipped in B: {latencies[0] * 1000:.1f} ms")
    assert latencies[0] < 20.0          # bounded by the wait itself; the figure is in docs/performance.md


def test_a_notice_for_an_unknown_provider_or_garbage_is_ignored_and_counted(tmp_path: Path, pg_url: str) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            b, _ = await a_router(stack, tmp_path / "b", pg_url)
            other = NoticeBus(pg_url, lambda n: None)    # a process on another policy version
            await other.start()
            stack.push_async_callback(other.close)
            other.publish("sms-gateway-v2", True, "another-version")
            await until(lambda: heard(b.metrics, "unknown_provider") == 1, "the unknown provider is counted")
            with psycopg.connect(pg_url, autocommit=True) as c:
                for payload in ("not json", '{"v": 2, "state": "opened"}', '{"v": 1, "from": "x", '
                                '"provider": "flaky", "state": "maybe", "policy": "p"}'):
                    c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            await until(lambda: heard(b.metrics, "malformed") == 3, "garbage is counted")
            assert b.health.snapshot() == {} and b.fleet.heard_ignored == 1
            assert heard(b.metrics, "applied") == 0

    run(main)


def test_the_listener_comes_back_after_a_database_restart(tmp_path: Path) -> None:
    with PgCluster() as pg:
        url = pg.new_database()

        async def main() -> None:
            got: list[Notice] = []
            listener = NoticeBus(url, got.append, retry_s=0.1)
            sender = NoticeBus(url, lambda n: None, retry_s=0.1)
            await listener.start()
            await sender.start()
            try:
                await asyncio.wait_for(listener.listening.wait(), 20)
                await asyncio.to_thread(pg.stop, "fast")
                await until(lambda: not listener.listening.is_set(), "the listener sees the loss")
                sender.publish("flaky", True, "v")          # the database is down: dropped, not kept
                await until(lambda: sender.dropped == 1, "the notice is dropped")
                await asyncio.to_thread(pg.start)
                await asyncio.wait_for(listener.listening.wait(), 30)
                deadline = time.monotonic() + 30
                while not got:                              # the publisher reconnects on its own
                    assert time.monotonic() < deadline, "no notice after the restart"
                    sender.publish("flaky", False, "v")
                    await asyncio.sleep(0.2)
                assert got[0] == Notice(sender.origin, "flaky", False, "v")
            finally:
                await listener.close()
                await sender.close()

        run(main)


@pytest.mark.parametrize("payload", ["", "[]", '{"v":1,"from":"","provider":"p","state":"opened","policy":"v"}',
                                     '{"v":1,"from":"o","provider":"' + "p" * 300 + '","state":"closed","policy":"v"}'])
def test_decode_refuses_what_is_not_a_notice(payload: str) -> None:
    from routingd.daemon.store.pg_notify import decode
    assert decode(payload) is None
