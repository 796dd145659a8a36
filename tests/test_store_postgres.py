"""The PostgreSQL store's own behaviour (the shared contract runs in tests/test_store.py):
migration once under the advisory lock, a newer schema refused, and a database that goes away
and comes back (a waited write fails with StoreError, unwaited writes wait in the backlog and
are written when it returns, no restart)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from pg_cluster import PgCluster
from routingd.daemon.store import AttemptRow, MessageRow, StoreError
from routingd.daemon.store.postgres import SCHEMA_VERSION, PgStore, _Conn, migrate


def msg(mid: str, key: str | None = None) -> MessageRow:
    return MessageRow(mid, "{}", "default", "v1", "pending", 1000.0, 1060.0, idempotency_key=key)


def test_processes_starting_together_migrate_once(pg_url: str) -> None:
    found: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def one() -> None:
        c = _Conn(pg_url, 5)
        try:
            start.wait(10)
            found.append(migrate(c, "test"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(found) == [0, SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION]   # one migrated
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM routingd_schema").fetchone() == (SCHEMA_VERSION,)


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    async def main() -> StoreError:
        s = PgStore(pg_url)
        await s.open()
        await s.close()
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("INSERT INTO routingd_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(StoreError) as e:
            await PgStore(pg_url).open()
        return e.value

    err = asyncio.run(asyncio.wait_for(main(), 60))
    assert "newer routingd" in str(err) and "upgrade routingd" in str(err)


def test_unreachable_database_is_a_clear_error() -> None:
    with PgCluster() as pg:
        url = pg.url()
    async def main() -> None:
        await PgStore(url).open()
    with pytest.raises(StoreError) as e:
        asyncio.run(asyncio.wait_for(main(), 60))
    assert "unreachable" in str(e.value) and "[daemon] store" in str(e.value)


def test_a_url_is_shown_without_its_password_whatever_its_shape() -> None:
    """The store's name in errors and logs (`redact`): the password gone from the user part and
    from a ?password= parameter, the rest as written, even a port libpq would refuse."""
    from routingd.daemon.store.pg_conn import redact
    assert redact("postgresql://u:pw@h:99999/d") == "postgresql://u:***@h:99999/d"
    assert redact("postgresql://u@h/d?password=pw&sslmode=require") == \
        "postgresql://u@h/d?password=***&sslmode=require"
    assert redact("postgresql://u:pw@h1:5432,h2:5433/d") == "postgresql://u:***@h1:5432,h2:5433/d"
    assert redact("postgresql://routingd@db.internal/routingd") == "postgresql://routingd@db.internal/routingd"


def test_a_database_outage_fails_waited_writes_and_keeps_the_others_until_it_returns() -> None:
    with PgCluster() as pg:
        url = pg.new_database()

        async def until(cond: Any, what: str) -> None:
            for _ in range(600):                 # bounded: 60 s
                if cond():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"not within 60s: {what}")

        async def main() -> None:
            s = PgStore(url, connect_timeout_s=2)
            await s.open()
            assert await s.insert_message(msg("m"), 100.0, 1000.0) is None
            await asyncio.to_thread(pg.stop, "fast")
            with pytest.raises(StoreError):
                await s.insert_message(msg("n"), 100.0, 1000.0)     # a send would answer 503
            s.put_attempt(AttemptRow("m.0.1", "m", "email", "p", 1, 1000.0, 1010.0))
            s.finish("m", "delivered", 1001.0, 1001.0)
            mark = s.committed()
            await until(lambda: s.backlog > 0, "the unwaited writes are kept")
            assert not mark.done()
            await asyncio.to_thread(pg.start)
            await asyncio.wait_for(mark, 60)
            # `backlog` is the writer thread's count as of its last batch: it may trail the mark
            await until(lambda: s.backlog == 0, "the kept writes are written")
            got = s.get_message("m")
            assert got is not None and got.message.status == "delivered"
            assert [a.attempt_id for a in got.attempts] == ["m.0.1"]
            assert s.get_message("n") is None
            await s.close()

        asyncio.run(asyncio.wait_for(main(), 120))


def test_an_insert_whose_profile_assumption_no_longer_holds_is_refused_and_stores_nothing(pg_url: str) -> None:
    """insert_message(profile_seen=(user_id, version)): checked in the insert's transaction
    (daemon/profiles.py). A message assuming no profile where one is stored, or another version
    than the stored one, is refused with ProfileChanged, its first attempts with it; the other
    messages of the same batch are stored."""
    from routingd.daemon.profiles import profiles_of
    from routingd.daemon.store.interface import ProfileChanged

    def first(aid: str, mid: str) -> tuple[Any, ...]:
        return (aid, mid, "email", "p", 1, 1000.0, 1010.0, None, None, None, None)

    async def main() -> None:
        s = PgStore(pg_url)
        await s.open()
        try:
            profiles = profiles_of(s)
            assert profiles.known("u1") is None                  # not looked yet: read first
            assert await profiles.read("u1") == (None, None)      # none stored (read now: nothing to check)
            assert profiles.known("u1") == (None, ("u1", None))   # assumed from now on
            await profiles.put("u1", {"email": "a@example.com"}, 1000.0, merge=False)
            profile, seen = await profiles.read("u1")
            assert profile == {"email": "a@example.com"} and seen is None
            got = profiles.known("u1")
            assert got is not None and got[0] == profile and got[1] is not None
            version = got[1][1]
            assert isinstance(version, int)
            # one batch: a stale "none", a stale version, the current version, no assumption
            futs = [s.insert_message(msg("none"), 100.0, 1000.0, [first("none.1", "none")], ("u1", None)),
                    s.insert_message(msg("old"), 100.0, 1000.0, [first("old.1", "old")], ("u1", version - 1)),
                    s.insert_message(msg("cur"), 100.0, 1000.0, [first("cur.1", "cur")], ("u1", version)),
                    s.insert_message(msg("free"), 100.0, 1000.0, None, None)]
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert isinstance(results[0], ProfileChanged) and isinstance(results[1], ProfileChanged)
            assert results[2:] == [None, None]
            # an Idempotency-Key insert is checked too; and a new write is a new version
            await profiles.put("u1", {"email": "b@example.com"}, 1001.0, merge=False)
            with pytest.raises(ProfileChanged):
                await s.insert_message(msg("keyed", key="k1"), 100.0, 1000.0, None, ("u1", version))
            assert await s.insert_message(msg("keyed", key="k1"), 100.0, 1000.0, None, None) is None
        finally:
            await s.close()
        with psycopg.connect(pg_url) as c:
            assert sorted(r[0] for r in c.execute("SELECT id FROM messages")) == ["cur", "free", "keyed"]
            assert sorted(r[0] for r in c.execute("SELECT attempt_id FROM attempts")) == ["cur.1"]

    asyncio.run(main())
