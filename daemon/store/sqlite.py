"""The durable store: one SQLite file in WAL mode, written by a single thread with group commit.

The store is four modules: this one (the `Store` class: its hooks, its writes with SQL of
their own, the purge and the reads), sqlite_file.py (the file: its directory, lock file,
connections, schema, migration and errors), writer.py (the queue, the writer thread, group
commit and the backlog, shared with the PostgreSQL store) and batch.py (how a batch's rows are
written); sql.py holds the SQL text both stores share.

Durability: journal_mode=WAL with synchronous=FULL (the default here): a commit is fsynced
before `insert_message` returns, so a 202 survives power loss. synchronous=NORMAL in WAL mode
also survives a crash or SIGKILL of the process (the WAL is in the OS page cache) but may
lose the last commits on power loss or an OS crash; it is offered as `synchronous="NORMAL"`.
With group commit the fsync is shared by a whole batch, so FULL costs little under load
(see tests/test_store.py::test_group_commit_shares_commits).

Reads for the status endpoint run on the caller's thread on a second connection (WAL readers
never block the writer and see only committed data).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from typing import Any, Callable

from .batch import _apply, _encode
from .interface import StoreError
from .rows import AttemptRow, EventRow, MessageRow, StoredMessage
from .sql import _ATT_READ, _MSG_COLS, _list_query
from .sqlite_file import SCHEMA_VERSION, _explain, check_dir, connect, init_schema, lock, unlock
from .writer import QueuedStore, _Item

__all__ = ["SCHEMA_VERSION", "Store", "_encode", "_explain"]


def _message(r: tuple) -> MessageRow:
    return MessageRow(*r)


def _attempt(r: tuple) -> AttemptRow:
    return AttemptRow(*r)


def _event(r: tuple) -> EventRow:
    return EventRow(r[0], r[1], r[2], json.loads(r[3]))


def _read_events(conn: sqlite3.Connection, message_id: str) -> list[EventRow]:
    """A message's events in order: schema-1 rows (older) first, then the event_log groups."""
    out = [_event(r) for r in conn.execute(
        "SELECT message_id, type, at, data FROM events WHERE message_id = ? ORDER BY seq", (message_id,))]
    for (text,) in conn.execute("SELECT events FROM event_log WHERE message_id = ? ORDER BY seq", (message_id,)):
        out.extend(EventRow(message_id, t, at, data) for t, at, data in json.loads(text))
    return out


# list_message_ids' recipient filter: the request's to.user_id, to.email or to.phone_number
_RECIPIENT_SQL = ("json_extract(request, '$.message.to.user_id'), json_extract(request, '$.message.to.email'), "
                  "json_extract(request, '$.message.to.phone_number')")


class Store(QueuedStore):
    """The SQLite state file. `await open()` first; `await close()` last."""

    def __init__(self, path: str, synchronous: str = "FULL", busy_timeout_s: float = 5.0,
                 max_backlog: int = 50_000) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        super().__init__(os.path.abspath(path), max_backlog)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ the file (sqlite_file.py)

    def _check_dir(self) -> None:
        check_dir(self.path)

    def _lock(self) -> None:
        self._lock_fd = lock(self.path)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                unlock(self.path, self._lock_fd)
            finally:
                self._lock_fd = None

    def _connect(self, query_only: bool = False) -> sqlite3.Connection:
        return connect(self.path, self.busy_timeout_s, query_only)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            init_schema(conn, self.path, self.synchronous)
        except sqlite3.Error as e:
            raise _explain(self.path, e, "set up the database") from None

    def _close_writer(self, conn: Any) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        conn.close()

    # The transaction and error hooks of the writer loop (writer.py _writer, _run_batch): the
    # PostgreSQL store (daemon/store/postgres.py) shares the loop and the queue and overrides these.

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _apply_items(self, conn: Any, items: list[_Item], extra: list[tuple[asyncio.Future, Any]],
                     ends: list[int] | None) -> list[Any]:
        return _apply(conn, items, extra, ends)

    def _explain_error(self, exc: BaseException, doing: str) -> StoreError:
        return _explain(self.path, exc, doing)

    def _transient(self, exc: BaseException) -> bool:
        """A write error that may pass (the disk full, an I/O error, read-only, locked): the
        writes nobody waits for are kept and retried; any other is a row never taken."""
        return isinstance(exc, sqlite3.OperationalError)

    # ------------------------------------------------------------------ writes with SQL of their own

    def put_policy(self, version: str, source: str, path: str, now: float) -> None:
        self.write(lambda c: c.execute(
            "INSERT OR IGNORE INTO policies (version, source, path, stored_at) VALUES (?,?,?,?)",
            (version, source, path, now)))

    def end_open_attempts(self, message_id: str, at: float, detail: str, keep_awaiting: bool = True) -> None:
        """Mark attempts that never ended (the process stopped under them) as cancelled. An attempt
        answered 2xx and awaiting its receipt (not ended, a 2xx status_code) is kept open unless
        keep_awaiting is False: the next start waits for its receipt (docs/reliability.md)."""
        awaiting = " AND (status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)" if keep_awaiting else ""
        self.write(lambda c: c.execute(
            "UPDATE attempts SET ended_at = ?, outcome = 'cancelled', detail = ? "
            "WHERE message_id = ? AND ended_at IS NULL" + awaiting, (at, detail, message_id)))

    def add_event_if_message(self, e: EventRow) -> None:
        """Store an event only if its message is still stored: an event for a message the
        retention purge deleted meanwhile would be an orphan row that no purge finds."""
        text = _encode([[e.type, e.at, e.data]])
        self.write(lambda c: c.execute(
            "INSERT INTO event_log (message_id, events) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?)",
            (e.message_id, text, e.message_id)))

    def shift_times(self, delta: float, keys_since: float) -> None:
        """The wall clock stepped by `delta` seconds while the process ran (daemon/clock.py): move
        the times of the pending messages and of their attempts, and the idempotency keys created
        at or after `keys_since` (on the old time axis), so they read on the new one."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE messages SET accepted_at = accepted_at + ?, message_deadline = message_deadline + ? "
                         "WHERE status = 'pending'", (delta, delta))
            conn.execute("UPDATE attempts SET started_at = started_at + ?, deadline = deadline + ?, "
                         "ended_at = ended_at + ? WHERE message_id IN "
                         "(SELECT id FROM messages WHERE status = 'pending')", (delta, delta, delta))
            conn.execute("UPDATE idempotency SET created_at = created_at + ? WHERE created_at >= ?",
                         (delta, keys_since))

        self.write(op)

    async def purge(self, now: float, retention_s: float, idempotency_ttl_s: float, keep_policy: str,
                    limit: int = 5000, forget: Callable[[list[str]], None] | None = None) -> int:
        """Delete up to `limit` terminal messages finished before now - retention (with their
        attempts and events), expired idempotency keys and unused policies; return messages deleted.

        forget(ids), if given, is called on the loop with the ids chosen, before they are deleted:
        the caller drops them from memory there, so that nothing it queues for them afterwards
        (a late receipt's rows) can be written after the delete, as orphan rows."""

        def select(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE status != 'pending' AND finished_at < ? LIMIT ?",
                (now - retention_s, limit))]

        chosen: list[str] = list(await self.call(select))
        if forget is not None and chosen:
            forget(chosen)

        def op(conn: sqlite3.Connection) -> int:
            ids = chosen
            # rows of the chosen messages queued before forget() are written before this runs
            # (one writer, queue order), and are deleted with them
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM events WHERE message_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM event_log WHERE message_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM attempts WHERE message_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
            conn.execute("DELETE FROM idempotency WHERE created_at < ?", (now - idempotency_ttl_s,))
            conn.execute("DELETE FROM policies WHERE version != ? AND version NOT IN "
                         "(SELECT DISTINCT policy_version FROM messages)", (keep_policy,))
            return len(ids)

        return int(await self.call(op))

    # ------------------------------------------------------------------ reads

    async def load_pending(self) -> list[StoredMessage]:
        """Every non-terminal message with its attempts and events, oldest first."""

        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            msgs = [_message(r) for r in conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE status = 'pending' ORDER BY accepted_at")]
            out = []
            for m in msgs:
                atts = [_attempt(r) for r in conn.execute(
                    f"SELECT {_ATT_READ} FROM attempts WHERE message_id = ? ORDER BY started_at, attempt_id",
                    (m.id,))]
                evs = _read_events(conn, m.id)
                out.append(StoredMessage(m, atts, evs))
            return out

        return list(await self.call(op))

    async def policy_source(self, version: str) -> tuple[str, str] | None:
        def op(conn: sqlite3.Connection) -> tuple[str, str] | None:
            r = conn.execute("SELECT source, path FROM policies WHERE version = ?", (version,)).fetchone()
            return None if r is None else (str(r[0]), str(r[1]))

        return await self.call(op)

    def _read(self) -> sqlite3.Connection:
        if self._ro is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        return self._ro

    def get_message(self, message_id: str) -> StoredMessage | None:
        """A committed message with its attempts and events (reads on the calling thread)."""
        conn = self._read()
        try:
            r = conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
            if r is None:
                return None
            atts = [_attempt(a) for a in conn.execute(
                f"SELECT {_ATT_READ} FROM attempts WHERE message_id = ? ORDER BY started_at, attempt_id",
                (message_id,))]
            evs = _read_events(conn, message_id)
        except sqlite3.Error as e:
            raise _explain(self.path, e, "read a message") from None
        return StoredMessage(_message(r), atts, evs)

    def get_attempt(self, attempt_id: str) -> AttemptRow | None:
        conn = self._read()
        try:
            r = conn.execute(f"SELECT {_ATT_READ} FROM attempts WHERE attempt_id = ?", (attempt_id,)).fetchone()
        except sqlite3.Error as e:
            raise _explain(self.path, e, "read an attempt") from None
        return None if r is None else _attempt(r)

    def attempt_by_vendor_id(self, provider: str, provider_message_id: str) -> AttemptRow | None:
        """The committed attempt of `provider` whose vendor id is `provider_message_id` (index
        attempts_vendor), the latest if a vendor ever reused one."""
        conn = self._read()
        try:
            r = conn.execute(f"SELECT {_ATT_READ} FROM attempts WHERE provider = ? AND provider_message_id = ? "
                             "ORDER BY started_at DESC LIMIT 1", (provider, provider_message_id)).fetchone()
        except sqlite3.Error as e:
            raise _explain(self.path, e, "read an attempt") from None
        return None if r is None else _attempt(r)

    def get_request(self, message_id: str) -> str | None:
        """The stored request (JSON text) of a committed message; reads on the calling thread."""
        try:
            r = self._read().execute("SELECT request FROM messages WHERE id = ?", (message_id,)).fetchone()
        except sqlite3.Error as e:
            raise _explain(self.path, e, "read a message") from None
        return None if r is None else str(r[0])

    def list_message_ids(self, before: str | None, limit: int, status: str | None = None,
                         recipient: str | None = None) -> list[str]:
        """Ids of committed messages, newest first (ids begin with their acceptance time), those
        older than the id `before` (a page's cursor); `status` and `recipient` (the request's
        to.user_id, to.email or to.phone_number) filter them. Reads on the calling thread."""
        sql, args = _list_query(before, limit, status, recipient, _RECIPIENT_SQL)
        try:
            return [str(r[0]) for r in self._read().execute(sql, args)]
        except sqlite3.Error as e:
            raise _explain(self.path, e, "list messages") from None

    def read_one(self, sql: str, args: tuple[Any, ...], doing: str) -> tuple[Any, ...] | None:
        """One row of a read (`?` placeholders) on the calling thread, or None; StoreError on failure."""
        try:
            r = self._read().execute(sql, args).fetchone()
        except sqlite3.Error as e:
            raise _explain(self.path, e, doing) from None
        return None if r is None else tuple(r)

    def has_table(self, name: str) -> bool:
        r = self.read_one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,), "read the schema")
        return r is not None

    def counts(self) -> dict[str, int]:
        """Messages per status (for tests and diagnostics)."""
        conn = self._read()
        return {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM messages GROUP BY status")}
