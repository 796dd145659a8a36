"""Receipts against a real Router, real SQLite and real HTTP stand-ins on loopback: a receipt is
answered only once it is committed, a replayed one is recorded once, and one for a message the
retention purge deleted changes nothing (docs/api.md "Receipts", docs/reliability.md).
The restart cases, which cross a process boundary, are in tests/test_restart_integrity.py."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import until  # noqa: E402
from provider_standin import ProviderStandin  # noqa: E402
from test_runtime import http, policy_text, router_for, run, send  # noqa: E402

from routingd.daemon.metrics import Metrics  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.clock import rfc3339  # noqa: E402
from routingd.daemon.runtime import Router, new_message_id  # noqa: E402
from routingd.daemon.store import Store  # noqa: E402

RECEIPT = dict(confirm='"receipt"', receipt_timeout='"1m"', breaker="false")
ONE_CHANNEL = ('[channels.email]\nproviders = ["a"]\n', 'channels = ["email"]')


def receipt_policy(url: str, daemon: str = "") -> str:
    return policy_text(http("a", url, **RECEIPT), *ONE_CHANNEL, timeouts='provider = "1m"', daemon=daemon)


def db_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


async def accepted(r: Router, mid: str) -> str:
    """The message's attempt, once the provider's 2xx made it await its receipt."""
    await until(lambda: any(e["type"] == "attempt_accepted" for e in r.status(mid)["events"]),  # type: ignore[index]
                timeout=10, what="attempt_accepted")
    return str(r.status(mid)["attempts"][0]["attempt_id"])    # type: ignore[index]


@contextlib.asynccontextmanager
async def awaiting_receipt(tmp_path: Path, daemon: str = "") -> AsyncIterator[tuple[Router, str, str]]:
    """A Router on tmp_path's state file whose one provider answered 2xx to one message, which now
    awaits its receipt: (router, message id, attempt id)."""
    async with ProviderStandin([{"status": 202}]) as a:
        async with router_for(tmp_path, receipt_policy(a.url, daemon=daemon)) as r:
            mid = (await r.submit(send())).message_id
            yield r, mid, await accepted(r, mid)


def test_a_receipt_is_answered_only_once_its_rows_are_committed(tmp_path: Path) -> None:
    async def main() -> None:
        async with awaiting_receipt(tmp_path) as (r, mid, aid):
            assert await r.receipt("a", aid, "delivered") is True
            # read at once, from another connection, without giving the loop a turn: what a
            # SIGKILL right after the answer would leave
            db = tmp_path / "state.db"
            assert db_rows(db, "SELECT status, delivered_at IS NOT NULL FROM messages WHERE id = ?", mid) == \
                [("delivered", 1)]
            assert db_rows(db, "SELECT outcome FROM attempts WHERE attempt_id = ?", aid) == [("delivered",)]

    run(main)


def test_a_receipt_that_cannot_be_stored_is_refused_with_a_retry(tmp_path: Path) -> None:
    from routingd.daemon.runtime import Overloaded

    async def main() -> None:
        async with awaiting_receipt(tmp_path) as (r, mid, aid):
            real = r.store.committed

            def failing() -> asyncio.Future[None]:
                # the store's answer when the write did not reach the disk (the writer's
                # failure itself is tests/test_faults.py's subject)
                fut = real()
                out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                fut.add_done_callback(lambda _f: out.set_exception(OSError("disk I/O error")))
                return out

            r.store.committed = failing         # type: ignore[method-assign]
            try:
                await r.receipt("a", aid, "delivered")
            except Overloaded as e:
                assert "state store" in e.reason
            else:
                raise AssertionError("a receipt that was not stored was acknowledged")
            finally:
                r.store.committed = real        # type: ignore[method-assign]

    run(main)


def test_a_replayed_receipt_is_recorded_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with awaiting_receipt(tmp_path) as (r, mid, aid):
            assert await r.receipt("a", aid, "delivered") is True
            first = r.status(mid)
            assert first is not None and first["status"] == "delivered"
            for _ in range(2000):
                assert await r.receipt("a", aid, "delivered") is True
                assert await r.receipt("a", aid, "failed") is True
            st = r.status(mid)
            assert st is not None and st["status"] == "delivered"
            # the first "failed" for a delivered attempt is recorded (late_receipt), nothing after
            assert len(st["events"]) <= len(first["events"]) + 1, [e["type"] for e in st["events"]]
            assert len(json.dumps(st)) < 2 * len(json.dumps(first))
            assert r.metrics.receipts_repeated._value.get() >= 3999
        # and once it is no longer in memory (answered from the store): still recorded once
        policy = parse_policy(receipt_policy("http://127.0.0.1:9/"), "routing.toml", env={})
        r2 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
        await r2.start()
        try:
            before = r2.status(mid)
            assert before is not None
            for _ in range(500):
                assert await r2.receipt("a", aid, "failed") is True
                assert await r2.receipt("a", aid, "delivered") is True
            after = r2.status(mid)
            assert after is not None and len(after["events"]) == len(before["events"])
        finally:
            await r2.stop(0)

    run(main, timeout=120)


def test_a_receipt_for_a_purged_message_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    def rows_of(mid: str) -> list[int]:
        return [db_rows(db, f"SELECT count(*) FROM {t} WHERE message_id = ?", mid)[0][0]
                for t in ("attempts", "events", "event_log")]

    async def main() -> None:
        async with awaiting_receipt(tmp_path, daemon='retention = "1ms"') as (r, mid, aid):
            assert await r.receipt("a", aid, "delivered") is True       # finished, kept in memory
            await r.store.flush()
            # the purge takes what finished more than the 1 ms retention ago: wait for that
            # on the router's own clock rather than assume it has passed
            finished = r.status(mid)["finished_at"]
            await until(lambda: rfc3339(r.clock.now() - 0.002) > finished, what="the retention to pass")
            assert await r.purge_once(0.001, 3600.0) == 1
            assert r.status(mid) is None                              # gone from memory too
            # the vendor's resend of the receipt: answered, counted, and nothing written
            assert await r.receipt("a", aid, "delivered") is True
            assert await r.receipt("a", aid, "failed") is True
            await r.store.flush()
            assert r.metrics.receipts_unmatched._value.get() == 2
            assert r.status(mid) is None
            assert db_rows(db, "SELECT count(*) FROM messages WHERE id = ?", mid) == [(0,)]
            assert rows_of(mid) == [0, 0, 0]
            # an attempt of a message id younger than the retention that never existed: still
            # unknown (stamped an hour ahead: a 1 ms retention can pass before the receipt is
            # looked at on a busy machine, and an id's time is truncated to the millisecond)
            young = f"{int(r.clock.now() * 1000) + 3_600_000:011x}{new_message_id()[11:]}"
            assert await r.receipt("a", f"{young}.0.1", "delivered") is False

    run(main)


def test_a_receipt_before_the_resume_is_refused_503_not_acknowledged_and_lost(tmp_path: Path) -> None:
    """The HTTP server may take a receipt before start() has resumed the pending messages; the
    attempt it is for is not awaiting yet, so the receipt would only be recorded as late though
    answered 2xx. It is refused (503: the vendor sends it again) until the resume is done."""
    from routingd.daemon.runtime import Overloaded

    async def main() -> None:
        policy = parse_policy(receipt_policy("http://127.0.0.1:9"), "routing.toml", env={})
        router = Router(policy, Store(str(tmp_path / "state.db")), Metrics(), rng_seed=7)
        with pytest.raises(Overloaded, match="starting"):
            await router.receipt("a", "m.0.1", "delivered")
        with pytest.raises(Overloaded, match="starting"):
            router.vendor_event("a", "m.0.1", "sent", {})
    run(main)
