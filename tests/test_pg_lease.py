"""The lease SQL (daemon/store/lease.py) on a real database, with two stores standing for two
processes: a live node's messages are never claimed, a dead one's are claimed once (by one
claimer), a late renewal reports what is still owned, a clean close releases at once, and the
retention purge keeps the policy another live process runs; a Router whose renewal came late drops
every message taken over meanwhile, one accepted while the renewal waited included. The daemons:
test_postgres_cluster.py, test_pg_crash.py."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import psycopg

from routingd.daemon.core.policy import parse_policy
from routingd.daemon.core.request import SendRequest
from routingd.daemon.metrics import Metrics
from routingd.daemon.runtime import Router
from routingd.daemon.store import MessageRow, lease
from routingd.daemon.store.postgres import PgStore

# One provider that never answers: a message stays pending (in the Router's memory) until dropped.
HANGING = """
version = 1
[timeouts]
provider = "5m"
channel = "10m"
message = "1h"
[providers.hang]
type = "sandbox"
fail = "hang"
[channels.email]
providers = ["hang"]
[routes.default]
channels = ["email"]
"""


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), 60))


def msg(mid: str, at: float = 1000.0) -> MessageRow:
    return MessageRow(id=mid, request='{"message": {"to": {"email": "a@example.com"}}}', route="default",
                      policy_version="v1", status="pending", accepted_at=at, message_deadline=at + 60)


def _expire(url: str, node: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE nodes SET lease_until = now() - interval '1 second' WHERE node = %s", (node,))


def test_claims_take_only_a_dead_nodes_messages_once_and_a_late_renewal_sees_what_it_lost(pg_url: str) -> None:
    async def main() -> None:
        a, b, c = PgStore(pg_url), PgStore(pg_url), PgStore(pg_url)
        for s in (a, b, c):
            await s.open()
        for i in range(5):
            assert await a.insert_message(msg(f"m{i}", 1000.0 + i), 86400, 1000.0) is None
        assert await b.call(lambda conn: lease.claim(conn, b.node, 10.0, 100)) == []     # a is live
        _expire(pg_url, a.node)
        got_b = await b.call(lambda conn: lease.claim(conn, b.node, 10.0, 3))
        got_c = await c.call(lambda conn: lease.claim(conn, c.node, 10.0, 100))
        assert [m.message.id for m in got_b] == ["m0", "m1", "m2"]          # oldest first, bounded
        assert [m.message.id for m in got_c] == ["m3", "m4"]                # each message once
        # a renews late: live again, and told which of its messages were taken over (all five)
        assert await a.call(lambda conn: lease.renew(conn, a.node, 10.0)) is True
        assert await a.call(lambda conn: lease.taken_from(conn, a.node, [f"m{i}" for i in range(5)])) == \
            {f"m{i}" for i in range(5)}
        assert await a.call(lambda conn: lease.renew(conn, a.node, 10.0)) is False     # in time now
        # a final status from a (no longer the owner) is not written; b's is
        a.finish("m0", "delivered", 1001.0, 1001.0)
        b.finish("m1", "delivered", 1001.0, 1001.0)
        await a.flush()
        await b.flush()
        assert a.get_message("m0").message.status == "pending"
        assert a.get_message("m1").message.status == "delivered"
        # a clean close releases at once: c takes b's remaining pending message
        await b.close()
        assert [m.message.id for m in await c.call(lambda conn: lease.claim(conn, c.node, 10.0, 100))] == \
            ["m0", "m2"]
        for s in (a, c):
            await s.close()

    run(main)


def test_the_purge_keeps_the_policy_another_live_process_runs(pg_url: str) -> None:
    async def main() -> None:
        a, b = PgStore(pg_url), PgStore(pg_url)
        await a.open()
        await b.open()
        a.put_policy("va", "x", "p", 1000.0)
        b.put_policy("vb", "y", "p", 1000.0)
        a.put_policy("unused", "z", "p", 1000.0)
        a.put_policy("fresh", "w", "p", 9000.0)                # stored within the last hour
        await a.call(lambda conn: lease.renew(conn, a.node, 10.0, "va"))
        await b.call(lambda conn: lease.renew(conn, b.node, 10.0, "vb"))
        await b.purge(now=10_000.0, retention_s=100.0, idempotency_ttl_s=100.0, keep_policy="vb")
        assert await b.policy_source("va") is not None             # a runs it
        assert await b.policy_source("fresh") is not None
        assert await b.policy_source("unused") is None
        _expire(pg_url, a.node)
        await b.purge(now=10_000.0, retention_s=100.0, idempotency_ttl_s=100.0, keep_policy="vb")
        assert await b.policy_source("va") is None                 # a is gone, nothing names it
        await a.close()
        await b.close()

    run(main)


def test_a_late_renewal_drops_a_message_accepted_while_it_waited_and_taken_over(pg_url: str) -> None:
    """Regression (found while writing test_pg_crash.py, reading Cluster.renew): the messages to check
    were listed before the renewal, which waits for a claim holding this node's row; a message
    accepted meanwhile and taken by that claim was then routed by both processes to the end.
    Now what was taken is read after the renewal committed."""
    def send() -> SendRequest:
        return SendRequest.model_validate({"message": {"to": {"email": "a@example.com"},
                                                       "content": {"title": "t", "body": "b"}}})

    async def main() -> None:
        router = Router(parse_policy(HANGING, "routing.toml", env={}), PgStore(pg_url, lease_s=10.0),
                        Metrics(), rng_seed=1)
        await router.start()
        claimer = psycopg.connect(pg_url)
        try:
            cluster = router._cluster
            assert cluster is not None
            await cluster.stop()            # the test runs the renewal itself (the book reconnects)
            node = cluster.node
            before = (await router.submit(send())).message_id
            stays = (await router.submit(send())).message_id
            # the lease ran out (a stall); a claimer holds this node's row, as lease.claim does
            claimer.execute("UPDATE nodes SET lease_until = now() - interval '1 second' WHERE node = %s", (node,))
            claimer.commit()
            claimer.execute("SELECT node FROM nodes WHERE node = %s FOR UPDATE", (node,))
            renewal = asyncio.get_running_loop().create_task(cluster.renew())

            def renewal_waits() -> bool:
                with psycopg.connect(pg_url) as c:
                    row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()").fetchone()
                return row is not None and row[0] > 0
            for _ in range(400):            # bounded: the renewal reaches the row lock
                if await asyncio.to_thread(renewal_waits):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the renewal never waited for the claimer's lock")
            during = (await router.submit(send())).message_id      # accepted while the renewal waits
            assert during in router._live
            # the claim takes `before` and `during` (both committed, this node's lease expired)
            claimer.execute("UPDATE messages SET owner = 'elsewhere/1/x' WHERE id = ANY(%s)", ([before, during],))
            await asyncio.to_thread(claimer.commit)
            await asyncio.wait_for(renewal, 30)
            assert before not in router._live and during not in router._live, "a taken message is still routed here"
            assert stays in router._live and cluster.lost == 2
            after = (await router.submit(send())).message_id         # accepted after the renewal: kept
            await cluster.renew()
            assert after in router._live and stays in router._live
        finally:
            claimer.close()                 # its lock, if the test failed holding it
            await router.stop(0.0)

    run(main)
