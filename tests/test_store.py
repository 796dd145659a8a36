"""The stores: durability, group commit, idempotency keys, purge, and clear errors. The tests of
the contract (daemon/store/interface.py) run against both implementations (the `b` fixture:
SQLite in a temporary file, PostgreSQL in a fresh database of the session's throwaway cluster,
tests/pg_cluster.py); the file-level ones (locks, schema upgrades, a refusing disk) are SQLite's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from routingd.daemon.store import SCHEMA_VERSION, AttemptRow, EventRow, MessageRow, Store, StoreError


class Backend:
    """One store implementation: new stores on one location, and counts read by an independent
    connection (which sees committed rows only)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where

    def store(self) -> Store:
        if self.kind == "sqlite":
            return Store(self.where)
        from routingd.daemon.store.postgres import PgStore
        return PgStore(self.where)

    def count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        if self.kind == "sqlite":
            other = sqlite3.connect(self.where)
            try:
                return int(other.execute(sql, args).fetchone()[0])
            finally:
                other.close()
        import psycopg
        with psycopg.connect(self.where, autocommit=True) as c:
            row = c.execute(sql.replace("?", "%s"), args).fetchone()
            assert row is not None
            return int(row[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def b(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state.db"))
    return Backend("postgresql", request.getfixturevalue("pg_url"))


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))


def msg(mid: str, at: float = 1000.0, key: str | None = None) -> MessageRow:
    return MessageRow(id=mid, request='{"message": {"to": {"email": "a@example.com"}}}', route="default",
                      policy_version="v1", status="pending", accepted_at=at, message_deadline=at + 60,
                      idempotency_key=key)


def test_message_attempts_events_round_trip_and_survive_reopen(b: Backend) -> None:
    async def first() -> None:
        s = b.store()
        await s.open()
        assert await s.insert_message(msg("m1"), 86400, 1000.0) is None
        assert await s.insert_message(msg("m2"), 86400, 1000.0) is None
        s.put_policy("v1", "version = 1\n", "routing.toml", 1000.0)
        s.put_attempt(AttemptRow("m1.0.1", "m1", "email", "ses", 1, 1000.0, 1010.0))
        s.put_attempt(AttemptRow("m1.0.1", "m1", "email", "ses", 1, 1000.0, 1010.0, 1000.5, "failed", 503, "HTTP 503"))
        s.add_event(EventRow("m1", "attempt_ended", 1000.5, {"attempt_id": "m1.0.1", "outcome": "failed"}))
        s.put_attempt(AttemptRow("m1.0.2", "m1", "email", "sendgrid", 1, 1000.5, 1010.0))   # never ends
        s.finish("m2", "delivered", 1001.0, 1001.0)
        await s.flush()
        got = s.get_message("m1")
        assert got is not None
        assert [a.outcome for a in got.attempts] == ["failed", None]
        assert got.attempts[0].status_code == 503 and got.attempts[0].detail == "HTTP 503"
        assert got.events[0].data == {"attempt_id": "m1.0.1", "outcome": "failed"}
        assert s.get_message("nope") is None
        await s.close()

    async def second() -> None:
        s = b.store()
        await s.open()
        pending = await s.load_pending()
        assert [p.message.id for p in pending] == ["m1"]           # m2 finished
        assert len(pending[0].attempts) == 2 and len(pending[0].events) == 1
        assert await s.policy_source("v1") == ("version = 1\n", "routing.toml")
        s.end_open_attempts("m1", 2000.0, "interrupted")
        await s.flush()
        assert [a.outcome for a in s.get_message("m1").attempts] == ["failed", "cancelled"]
        m2 = s.get_message("m2").message
        assert (m2.status, m2.finished_at, m2.delivered_at) == ("delivered", 1001.0, 1001.0)
        await s.close()

    run(first)
    run(second)


def test_group_commit_shares_commits_and_each_insert_is_committed_when_it_returns(b: Backend) -> None:
    async def main() -> None:
        s = b.store()
        await s.open()
        before = s.commits
        seen_by_other_connection: list[bool] = []

        async def one(i: int) -> None:
            await s.insert_message(msg(f"g{i}"), 86400, 1000.0)
            # an independent reader sees only committed rows
            seen_by_other_connection.append(b.count("SELECT count(*) FROM messages WHERE id = ?", (f"g{i}",)) == 1)

        await asyncio.gather(*(one(i) for i in range(300)))
        assert all(seen_by_other_connection) and len(seen_by_other_connection) == 300
        commits = s.commits - before
        assert 1 <= commits < 300, f"{commits} commits for 300 concurrent inserts: no group commit"
        await s.close()

    run(main)


def test_committed_resolves_with_the_commit_of_the_rows_before_it_and_adds_no_commit(b: Backend) -> None:
    def attempts_seen() -> int:
        return b.count("SELECT count(*) FROM attempts")

    async def main() -> None:
        s = b.store()
        await s.open()
        await s.insert_message(msg("m"), 86400, 1000.0)
        before = s.commits
        marks = []
        for i in range(20):       # one loop turn: 20 rows, each followed by its mark
            s.put_attempt(AttemptRow(f"m-{i}", "m", "email", "a", 1, 1000.0, 1010.0, None, None, None, None))
            marks.append(s.committed())
        assert attempts_seen() == 0
        seen = []
        for i, fut in enumerate(marks):
            await fut
            seen.append(attempts_seen() >= i + 1)
        assert all(seen)
        assert s.commits - before == 1          # the marks rode with the rows' one commit
        await s.flush()
        assert s.commits - before == 2          # (flush is a commit of its own, for contrast)
        await s.close()

    run(main)


def test_a_failing_row_fails_alone_and_the_marks_around_it_still_resolve(b: Backend) -> None:
    """A batch that fails is retried item by item: the culprit's caller gets the StoreError, the
    rows and committed() marks before and after it are committed and resolve as usual."""
    async def main() -> None:
        s = b.store()
        await s.open()
        await s.insert_message(msg("m"), 86400, 1000.0)
        s.put_attempt(AttemptRow("m-1", "m", "email", "a", 1, 1000.0, 1010.0))
        first = s.committed()
        dup = s.insert_message(msg("m"), 86400, 1000.0)       # the same id again: a constraint error
        s.put_attempt(AttemptRow("m-2", "m", "email", "b", 1, 1000.0, 1010.0))
        second = s.committed()
        assert await first is None and await second is None
        with pytest.raises(StoreError):
            await dup
        assert s.write_errors == 1
        got = s.get_message("m")
        assert got is not None and [a.attempt_id for a in got.attempts] == ["m-1", "m-2"]
        await s.close()

    run(main)


def test_an_inserts_attempt_rows_are_committed_with_it_or_not_at_all(b: Backend) -> None:
    """insert_message(..., attempts=): the rows share the insert's transaction; an idempotent
    replay stores none of them; an insert that fails takes its rows down with it; and the
    callers of a batch resume in queue order (a flush queued after an insert resumes after it)."""
    def first(aid: str, mid: str) -> tuple[Any, ...]:
        return (aid, mid, "email", "ses", 1, 1000.0, 1010.0, None, None, None, None)

    async def main() -> None:
        s = b.store()
        await s.open()
        assert await s.insert_message(msg("a", key="k"), 100.0, 1000.0, [first("a.0.1", "a")]) is None
        got = s.get_message("a")
        assert got is not None and [x.attempt_id for x in got.attempts] == ["a.0.1"]
        # a replay of key k: the earlier id back, and neither its message nor its attempt stored
        assert await s.insert_message(msg("b", key="k"), 100.0, 1001.0, [first("b.0.1", "b")]) == "a"
        assert s.get_message("b") is None and s.get_attempt("b.0.1") is None
        order: list[str] = []

        async def answered(name: str, fut: Any) -> None:
            try:
                await fut
            except StoreError:
                name += " failed"
            order.append(name)

        ok = s.insert_message(msg("c"), 100.0, 1002.0, [first("c.0.1", "c")])
        await asyncio.gather(answered("c", ok), answered("flush", s.flush()))
        # an insert that fails (the id "a" again) fails alone, with its attempt
        dup = s.insert_message(msg("a"), 100.0, 1003.0, [first("a.9.1", "a")])
        ok = s.insert_message(msg("d"), 100.0, 1003.0, [first("d.0.1", "d")])
        await asyncio.gather(answered("dup", dup), answered("d", ok), answered("flush", s.flush()))
        assert order == ["c", "flush", "dup failed", "d", "flush"]
        assert s.get_attempt("a.9.1") is None
        assert s.get_attempt("c.0.1") is not None and s.get_attempt("d.0.1") is not None
        await s.close()

    run(main)


def test_every_row_shape_round_trips_whatever_is_null(b: Backend) -> None:
    """The writer has several statement shapes per table (a new message and a just-started
    attempt with their NULL columns in the statement, an ended attempt without detail, the full
    row): every combination of NULL and non-NULL columns reads back exactly as it was written,
    in one batch and with a row started and ended within it."""
    async def main() -> None:
        s = b.store()
        await s.open()
        rows = [AttemptRow("m.0.1", "m", "email", "a", 1, 1000.0, 1010.0),                          # started
                AttemptRow("m.0.2", "m", "email", "b", 1, 1000.0, 1010.0, 1000.2, "delivered", 200),  # no detail
                AttemptRow("m.0.3", "m", "email", "c", 1, 1000.0, 1010.0, 1010.0, "timeout"),         # no code
                AttemptRow("m.0.4", "m", "email", "d", 1, 1000.0, 1010.0, 1000.1, "failed", 503, "HTTP 503"),
                AttemptRow("m.0.5", "m", "email", "e", 1, 1000.0, 1010.0, None, None, None, "note"),
                AttemptRow("m.0.6", "m", "email", "f", 2, 0.0, 0.0, 0.0, "", 0, "")]                  # falsy, not NULL
        fut = s.insert_message(msg("m", key="k"), 100.0, 1000.0)
        plain = s.insert_message(msg("n"), 100.0, 1000.0)
        for r in rows:
            s.put_attempt(r)
        assert await fut is None and await plain is None
        s.put_attempt(AttemptRow("m.0.1", "m", "email", "a", 1, 1000.0, 1010.0, 1000.3, "network"))
        await s.flush()
        got = s.get_message("m")
        assert got is not None
        want = [AttemptRow("m.0.1", "m", "email", "a", 1, 1000.0, 1010.0, 1000.3, "network")] + rows[1:]
        assert sorted(got.attempts, key=lambda a: a.attempt_id) == want
        assert got.message.idempotency_key == "k"
        n = s.get_message("n")
        assert n is not None and (n.message.finished_at, n.message.delivered_at, n.message.idempotency_key) == \
            (None, None, None)
        assert n.message.request == msg("n").request and n.message.run == 0
        await s.close()

    run(main)


def test_idempotency_key_returns_first_id_until_the_ttl(b: Backend) -> None:
    async def main() -> None:
        s = b.store()
        await s.open()
        assert await s.insert_message(msg("a", key="k1"), 100.0, 1000.0) is None
        # concurrent submits with one key: the writer serialises them, one row wins
        results = await asyncio.gather(*(s.insert_message(msg(f"b{i}", key="k2"), 100.0, 1000.0) for i in range(5)))
        assert results[0] is None and results[1:] == ["b0"] * 4
        assert await s.insert_message(msg("c", key="k1"), 100.0, 1050.0) == "a"
        assert await s.insert_message(msg("d", key="k1"), 100.0, 1200.0) is None      # older than the TTL
        assert await s.insert_message(msg("e", key="k1"), 100.0, 1201.0) == "d"
        await s.close()

    run(main)



def test_list_message_ids_pages_newest_first_and_filters_by_status_and_recipient(b: Backend) -> None:
    async def main() -> None:
        s = b.store()
        await s.open()
        tos = {"m1": {"email": "a@example.com"}, "m2": {"phone_number": "+15550001"},
               "m3": {"user_id": "u1", "email": "b@example.com"}, "m4": {"email": "a@example.com"}}
        for mid, to in tos.items():
            row = msg(mid)
            row.request = json.dumps({"message": {"to": to}})
            await s.insert_message(row, 100.0, 1000.0)
        s.finish("m1", "delivered", 1001.0, 1001.0)
        await s.flush()
        assert s.list_message_ids(None, 10) == ["m4", "m3", "m2", "m1"]
        assert s.list_message_ids(None, 2) == ["m4", "m3"]
        assert s.list_message_ids("m3", 10) == ["m2", "m1"]
        assert s.list_message_ids(None, 10, status="delivered") == ["m1"]
        assert s.list_message_ids(None, 10, recipient="a@example.com") == ["m4", "m1"]
        assert s.list_message_ids(None, 10, recipient="+15550001") == ["m2"]
        assert s.list_message_ids(None, 10, recipient="u1") == ["m3"]
        assert s.list_message_ids(None, 10, recipient="b@example.com") == ["m3"]
        assert s.list_message_ids(None, 10, status="pending", recipient="a@example.com") == ["m4"]
        assert s.list_message_ids(None, 10, recipient="nobody") == []
        await s.close()

    run(main)

def test_purge_drops_old_terminal_messages_and_expired_keys_only(b: Backend) -> None:
    async def main() -> None:
        s = b.store()
        await s.open()
        for mid in ("old", "new", "pend"):
            await s.insert_message(msg(mid, key=f"key-{mid}"), 86400, 1000.0 if mid != "new" else 5000.0)
            s.add_event(EventRow(mid, "started", 1000.0, {}))
            s.put_attempt(AttemptRow(f"{mid}.0.1", mid, "email", "ses", 1, 1000.0, 1010.0))
        s.finish("old", "delivered", 1001.0, 1001.0)
        s.finish("new", "expired", 5001.0, None)
        s.put_policy("v1", "x", "p", 1000.0)
        s.put_policy("unused", "y", "p", 1000.0)
        deleted = await s.purge(now=6000.0, retention_s=3000.0, idempotency_ttl_s=4500.0, keep_policy="v9")
        assert deleted == 1
        assert s.get_message("old") is None and s.get_attempt("old.0.1") is None
        assert s.get_message("new") is not None and s.get_message("pend") is not None
        assert s.get_message("pend").events and s.get_attempt("pend.0.1") is not None
        assert await s.policy_source("v1") is not None and await s.policy_source("unused") is None
        # keys older than the TTL are gone: the same key now makes a new message
        assert await s.insert_message(msg("again", key="key-pend"), 86400, 6000.0) is None
        assert await s.insert_message(msg("again2", key="key-new"), 86400, 6000.0) == "new"
        await s.close()

    run(main)


def _open_error(path: str, **kw: Any) -> StoreError:
    async def main() -> StoreError:
        s = Store(path, **kw)
        with pytest.raises(StoreError) as e:
            await s.open()
        return e.value

    return run(main)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    err = _open_error(str(tmp_path / "nope" / "state.db"))
    assert "does not exist" in str(err) and str(tmp_path / "nope") in str(err) and "--state" in err.hint


def test_unwritable_location_is_a_clear_error() -> None:
    err = _open_error("/proc/routingd-test-state.db")     # nobody, not even root, creates files here
    assert err.path == "/proc/routingd-test-state.db" and "write access" in str(err)


def test_directory_as_state_path_is_a_clear_error(tmp_path: Path) -> None:
    err = _open_error(str(tmp_path))
    assert "is a directory" in str(err)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, it is a text file that got in the way\n" * 100)
    err = _open_error(str(path))
    assert str(path) in str(err) and "corrupt" in str(err) and "move the file aside" in err.hint


def test_second_daemon_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        first = Store(path)
        await first.open()
        second = Store(path)
        with pytest.raises(StoreError) as e:
            await second.open()
        assert "another routingd" in str(e.value)
        await first.close()
        await second.open()               # released on close
        await second.close()

    run(main)


def test_database_locked_by_another_program_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        err = _open_error(path, busy_timeout_s=0.2)
        assert "locked" in str(err) and "stop the other process" in err.hint
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    c = sqlite3.connect(path)
    c.execute("PRAGMA user_version = 99")
    c.close()
    err = _open_error(path)
    assert "newer routingd" in str(err)


def test_one_batch_keeps_queue_order_per_row_and_barriers(b: Backend) -> None:
    """Rows are written per statement in multi-row chunks: an attempt started and ended in the
    same batch ends up ended (an earlier detail kept), events keep their order, finishes apply,
    and a closure (end_open_attempts) sees every row queued before it."""
    async def main() -> None:
        s = b.store()
        await s.open()
        n = 150                                  # more than one chunk of every size
        await asyncio.gather(*(s.insert_message(msg(f"m{i}"), 86400, 1000.0) for i in range(n)))
        before = s.commits
        for i in range(n):
            mid = f"m{i}"
            s.put_attempt(AttemptRow(f"{mid}.1.1", mid, "email", "ses", 1, 1000.0, 1010.0, detail="first try"))
            for k in range(3):
                s.add_event(EventRow(mid, f"e{k}", 1000.0 + k, {"k": k, "i": i, "pi": 3.14159}))
            if i % 2:
                s.put_attempt(AttemptRow(f"{mid}.1.1", mid, "email", "ses", 1, 1000.0, 1010.0, 1000.5,
                                         "delivered", 200, None))
                s.finish(mid, "delivered", 1001.0, 1000.5)
        s.end_open_attempts("m0", 2000.0, "interrupted")      # a barrier after all of the above
        s.put_attempt(AttemptRow("m0.2.1", "m0", "email", "ses", 1, 2000.0, 2010.0))   # after it: stays open
        await s.flush()
        assert s.commits - before < 10, "rows queued in one loop turn share transactions"
        for i in (0, 1, 63, 64, 127, 149):
            got = s.get_message(f"m{i}")
            assert got is not None
            assert [e.type for e in got.events] == ["e0", "e1", "e2"]
            assert got.events[2].data == {"k": 2, "i": i, "pi": 3.14159}
            first = got.attempts[0]
            if i % 2:
                assert (got.message.status, got.message.finished_at) == ("delivered", 1001.0)
                assert (first.outcome, first.status_code, first.ended_at, first.detail) == \
                    ("delivered", 200, 1000.5, "first try")
            else:
                assert got.message.status == "pending"
        m0 = s.get_message("m0")
        assert [(a.attempt_id, a.outcome) for a in m0.attempts] == [("m0.1.1", "cancelled"), ("m0.2.1", None)]
        assert s.counts() == {"delivered": n // 2, "pending": n - n // 2}
        await s.close()

    run(main)


def test_a_schema_1_file_is_upgraded_and_its_events_still_read(tmp_path: Path) -> None:
    """Schema 1 kept one `events` row per event; schema 2 writes event_log groups. A file of the
    old shape opens, upgrades, lists its old events before the new ones, and purges both."""
    path = str(tmp_path / "state.db")

    async def make() -> None:
        s = Store(path)
        await s.open()
        await s.insert_message(msg("m1"), 86400, 1000.0)
        await s.close()

    run(make)
    c = sqlite3.connect(path)          # make it a schema-1 file with two old-style events
    c.execute("DROP TABLE event_log")
    c.executemany("INSERT INTO events (message_id, type, at, data) VALUES (?,?,?,?)",
                  [("m1", "started", 1000.0, '{"route":"default"}'), ("m1", "attempt_started", 1000.1, "{}")])
    c.execute("PRAGMA user_version = 1")
    c.commit()
    c.close()

    async def reopen() -> None:
        s = Store(path)
        await s.open()
        s.add_event(EventRow("m1", "attempt_ended", 1000.5, {"outcome": "delivered"}))
        s.add_event(EventRow("m1", "finished", 1000.6, {"status": "delivered"}))
        s.finish("m1", "delivered", 1000.6, 1000.5)
        await s.flush()
        got = s.get_message("m1")
        assert [(e.type, e.at, e.data) for e in got.events] == [
            ("started", 1000.0, {"route": "default"}), ("attempt_started", 1000.1, {}),
            ("attempt_ended", 1000.5, {"outcome": "delivered"}), ("finished", 1000.6, {"status": "delivered"})]
        assert await s.purge(now=5000.0, retention_s=100.0, idempotency_ttl_s=100.0, keep_policy="v") == 1
        await s.close()

    run(reopen)
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert c.execute("SELECT count(*) FROM event_log").fetchone()[0] == 0
    c.close()


def test_a_schema_2_file_gains_provider_message_id_in_place(tmp_path: Path) -> None:
    """Schema 3 adds attempts.provider_message_id: a schema-2 file (attempts without the column)
    opens, keeps its attempts (vendor id NULL), and then records and finds vendor ids."""
    path = str(tmp_path / "state.db")
    c = sqlite3.connect(path)           # a schema-2 file: the attempts table as schema 2 made it
    c.execute("CREATE TABLE attempts (attempt_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, channel TEXT NOT NULL, "
              "provider TEXT NOT NULL, try_no INTEGER NOT NULL, started_at REAL NOT NULL, ended_at REAL, "
              "deadline REAL NOT NULL, outcome TEXT, status_code INTEGER, detail TEXT)")
    c.execute("INSERT INTO attempts VALUES ('m1.0.1','m1','sms','tw',1,1000.0,NULL,1010.0,NULL,202,NULL)")
    c.execute("PRAGMA user_version = 2")
    c.commit()
    c.close()

    async def main() -> None:
        s = Store(path)
        await s.open()
        old = s.get_attempt("m1.0.1")
        assert old is not None and old.status_code == 202 and old.provider_message_id is None
        s.put_attempt(AttemptRow("m1.0.2", "m1", "sms", "tw", 1, 1001.0, 1011.0))
        s.set_provider_message_id("m1.0.2", "SM123")
        # a later upsert of the row (the attempt ends) keeps the vendor id
        s.put_attempt(AttemptRow("m1.0.2", "m1", "sms", "tw", 1, 1001.0, 1011.0, 1002.0, "delivered", 201))
        await s.flush()
        got = s.attempt_by_vendor_id("tw", "SM123")
        assert got is not None and got.attempt_id == "m1.0.2" and got.outcome == "delivered"
        assert got.provider_message_id == "SM123"
        assert s.attempt_by_vendor_id("other", "SM123") is None
        await s.close()

    run(main)
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert "attempts_vendor" in {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    c.close()


# --------------------------------------------------------------------------- writes the disk refuses


class Locker:
    """Another SQLite connection holding the write lock: the store's writes fail ("database is
    locked", after its busy timeout) until release() -- a refusing disk the test can switch off."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


async def until(cond: Callable[[], Any], timeout: float = 20.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_committed_never_resolves_before_the_row_before_it_is_on_disk(tmp_path: Path) -> None:
    """The write-ahead rule under a disk error: an attempt row that failed to write holds its
    committed() mark back until the row is written (the mark once resolved after the failure,
    and the provider call went out with no record of it)."""
    path = str(tmp_path / "state.db")

    async def main() -> None:
        s = Store(path, busy_timeout_s=0.05)
        await s.open()
        await s.insert_message(msg("m"), 86400, 1000.0)
        lock = Locker(path)
        s.put_attempt(AttemptRow("m-1", "m", "email", "a", 1, 1000.0, 1010.0))
        mark = s.committed()
        await until(lambda: s.write_errors > 0)
        lock.release()                                  # the disk takes writes again
        await asyncio.wait_for(mark, 20)
        assert s.get_attempt("m-1") is not None         # resolved only once the row was on disk
        await s.close()

    run(main)


def test_writes_nobody_waits_for_are_kept_in_order_and_written_when_the_disk_takes_them(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        s = Store(path, busy_timeout_s=0.05)
        await s.open()
        await s.insert_message(msg("m"), 86400, 1000.0)
        lock = Locker(path)
        s.put_attempt(AttemptRow("m-1", "m", "email", "a", 1, 1000.0, 1010.0))
        s.add_event(EventRow("m", "attempt_started", 1000.0, {"attempt_id": "m-1"}))
        await s.flush()                  # tried and kept: a flush does not fail for a write error
        assert s.backlog == 2
        s.put_attempt(AttemptRow("m-1", "m", "email", "a", 1, 1000.0, 1010.0, 1000.5, "delivered", 200))
        s.add_event(EventRow("m", "attempt_ended", 1000.5, {"attempt_id": "m-1"}))
        s.finish("m", "delivered", 1000.5, 1000.5)
        with pytest.raises(StoreError, match="locked"):           # a caller who waits is told
            await s.insert_message(msg("n"), 86400, 1000.0)
        await until(lambda: s.backlog == 5)
        assert not s.backlog_full
        s.max_backlog = 5
        assert s.backlog_full
        assert s.get_message("m").message.status == "pending"     # nothing of it on disk yet
        lock.release()
        await until(lambda: s.backlog == 0)            # written by the writer's own retry
        got = s.get_message("m")
        assert got is not None and got.message.status == "delivered"
        assert [(a.attempt_id, a.outcome) for a in got.attempts] == [("m-1", "delivered")]   # the end won
        assert [e.type for e in got.events] == ["attempt_started", "attempt_ended"]
        assert s.get_message("n") is None
        await s.close()

    run(main)


def test_close_reports_the_writes_it_could_not_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        s = Store(path, busy_timeout_s=0.05)
        await s.open()
        await s.insert_message(msg("m"), 86400, 1000.0)
        lock = Locker(path)
        s.finish("m", "delivered", 1000.5, 1000.5)
        await s.close()
        lock.release()
        assert s.backlog == 1                           # what close() could not store
        assert "1 write(s) could not be stored" in caplog.text

    run(main)


def test_sqlite_profiles_are_read_at_each_send_and_inserts_check_nothing(tmp_path: Path) -> None:
    """The SQLite store is one process per file: a send reads its recipient's profile then and
    there (none while no profile was ever stored) and insert_message ignores profile_seen
    (the PostgreSQL store's check: tests/test_store_postgres.py)."""
    from routingd.daemon.profiles import profiles_of

    async def main() -> None:
        s = Store(str(tmp_path / "state.db"))
        await s.open()
        try:
            profiles = profiles_of(s)
            assert not s.profiles_versioned
            assert profiles.known("u1") == (None, None)
            await profiles.put("u1", {"email": "a@example.com"}, 1000.0, merge=False)
            assert profiles.known("u1") == ({"email": "a@example.com"}, None)
            await profiles.put("u1", {"email": "b@example.com"}, 1001.0, merge=False)
            assert profiles.known("u1") == ({"email": "b@example.com"}, None)
            assert await s.insert_message(msg("m"), 100.0, 1000.0, None, ("u1", None)) is None
        finally:
            await s.close()

    run(main)
