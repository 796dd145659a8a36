"""The PostgreSQL store: `[daemon] store = "postgresql://..."` (docs/scaling.md).

The same contract as the SQLite store (daemon/store/interface.py), and the same machinery: it
subclasses `sqlite.Store` and keeps its queue, its one writer thread and its group commit
(every operation waiting is written in ONE transaction, one commit, then every caller's future
resolves), its backlog of unwaited writes while the database refuses them, and its
`committed()` marks. What changes is below the writer loop's hooks: the connection, the SQL
(one statement per kind and batch, the rows as arrays: pg_writes.py; a batch of rows is one
pipeline, BEGIN to COMMIT), the schema and its migration, the errors.

Driver: psycopg 3 (synchronous). The store's design is one writer thread doing blocking
transactions and reads on the caller's thread (the Router's status reads are synchronous); a
synchronous driver fits that design as it is, where asyncpg (asyncio-only) would need the
writer and every read rewritten as coroutines on the loop (docs/scaling.md "Why psycopg").

Durability: a transaction is committed with synchronous_commit as the server sets it (on, by
default: the commit is flushed to the WAL before COMMIT returns), so a 202 survives a crash of
the database server.

Idempotency: the key is claimed by `INSERT ... ON CONFLICT` on the idempotency table's primary
key in the message's own transaction, so two processes sending the same key at once get one
message (the second waits on the first's row lock, then reads its id).

Schema: versioned in `routingd_schema` and migrated in place at open inside one transaction
that holds a transaction-scoped advisory lock, so processes starting together migrate once
(pg_schema.py: the DDL and `migrate`). The connection wrapper `_Conn` and what an error means
(`_explain`) are pg_conn.py's; this module is the store itself, its writes and its reads.

Several processes per database: each pending message row names its owner (`node`, this store's
process, whose lease is its row in `nodes`, registered at open); a new message is owned by the
process that accepted it, a start (`load_pending`) resumes only the messages of processes whose
lease expired, and a final status is written only by the message's owner (a process that lost
its lease cannot overwrite the new owner's).
The renewals, takeovers and handoffs are daemon/store/lease.py's and daemon/cluster.py's
(docs/scaling.md "Leases").

A database outage (pg_outage.py): a connection error marks the store's `outage` until the next
commit; readyz reports it, and a probe transaction finds out when the database is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable

import psycopg

from . import lease
from .batch import _apply
from .interface import StoreError
from .pg_conn import _Conn, _explain, redact
from .pg_outage import Outage, probe
from .pg_schema import MIGRATIONS, SCHEMA_VERSION, migrate
from .rows import AttemptRow, EventRow, MessageRow, StoredMessage
from .pg_writes import _PgWrites
from .sql import _ATT_READ, _MSG_COLS, _list_query
from .sqlite import Store
from .writer import _CALL, _Item

# the connection and the schema are modules of their own; their names stay importable from here
__all__ = ["CLAIM_BATCH", "MIGRATIONS", "SCHEMA_VERSION", "PgStore", "_Conn", "_explain", "migrate", "redact"]

log = logging.getLogger("routingd.store")

# How many expired-lease messages one claim takes (a start claims batch after batch).
CLAIM_BATCH = 500
# A policy stored this recently is never purged (another process may run it without a message yet).
_POLICY_GRACE_S = 3600.0

_RECIPIENT_SQL = ("request::jsonb #>> '{message,to,user_id}', request::jsonb #>> '{message,to,email}', "
                  "request::jsonb #>> '{message,to,phone_number}'")

class PgStore(Store):
    """The PostgreSQL store. `await open()` first; `await close()` last."""

    profiles_versioned = True       # inserts check what accept assumed of profiles (_PgWrites.check_profiles)

    def __init__(self, url: str, max_backlog: int = 50_000, connect_timeout_s: int = 5,
                 lease_s: float = 10.0) -> None:
        super().__init__(":memory:", max_backlog=max_backlog)
        self.url = url
        self.path = redact(url)
        self.connect_timeout_s = connect_timeout_s
        # this process's name on the rows it owns, and how long it owns them unrenewed
        self.node = lease.new_node_id()
        self.lease_s = lease_s
        self._writes = _PgWrites(self.node)
        self._read_lock = threading.Lock()
        self._pipe: psycopg.Pipeline | None = None      # the writer's open pipeline (_apply_items)
        self._reader: _Conn | None = None
        self.outage = Outage()              # readyz's "the database cannot be written" (pg_outage.py)
        self._probe: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await super().open()
        self._probe = asyncio.get_running_loop().create_task(probe(self.outage, self.call, lambda: self.backlog))

    def _check_dir(self) -> None:
        pass                      # no file

    def _lock(self) -> None:
        pass                      # no lock: processes share the database by lease (lease.py)

    def _unlock(self) -> None:
        pass

    def side_connection(self) -> _Conn:
        """A connection of its own (connected on first use), for the cluster loop (lease.py)."""
        return _Conn(self.url, self.connect_timeout_s)

    def _connect(self, query_only: bool = False) -> Any:
        c = _Conn(self.url, self.connect_timeout_s, custom_plans=not query_only)
        try:
            c.ensure()
        except psycopg.Error as e:
            raise _explain(self.path, e, "connect to the database") from None
        if query_only:
            self._reader = c
        return c

    def _init_schema(self, conn: Any) -> None:
        try:
            migrate(conn, self.path)
            conn.execute("BEGIN")
            lease.register(conn, self.node, self.lease_s)   # before any message names this node
            conn.execute("COMMIT")
        except psycopg.Error as e:
            self._rollback(conn)
            raise _explain(self.path, e, "set up the database") from None

    def _close_writer(self, conn: Any) -> None:
        conn.close()

    # ------------------------------------------------------------------ writer hooks

    # A batch of rows only (no closure: those may read a result psycopg has not fetched yet in
    # pipeline mode, as rowcount) is one pipeline, BEGIN to COMMIT: its statements go out
    # together and their results come back at the COMMIT (or at a statement whose rows are
    # read: the profile check, a keyed insert), two or three round trips instead of one per
    # statement; an error in it surfaces at the COMMIT and goes the same way as any other.

    def _begin(self, conn: Any) -> None:
        pass                      # BEGIN goes with the batch's first statements (_apply_items)

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.__exit__(None, None, None)         # sends it all, raises the first error
        self.outage.up()

    def _rollback(self, conn: Any) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            # After an error in a pipeline psycopg may take a statement for prepared whose Parse
            # the server skipped ("prepared statement _pg3_N does not exist" at its next use):
            # a new connection (and statement cache) rather than that. Only after an error.
            try:
                pipe.__exit__(None, None, None)
            except psycopg.Error:
                pass
            conn.close()            # the transaction ends with the session; ensure() connects again
            return
        try:
            raw = conn.raw
            if raw is not None and not raw.closed and not raw.broken:
                raw.execute("ROLLBACK")
        except psycopg.Error:
            pass

    def _apply_items(self, conn: Any, items: list[_Item], extra: list[tuple[asyncio.Future[Any], Any]],
                     ends: list[int] | None) -> list[Any]:
        if all(item[0] != _CALL for item in items):
            self._pipe = conn.ensure().pipeline()
            self._pipe.__enter__()
        conn.execute("BEGIN")
        self._writes.check_profiles(conn, items)
        return _apply(conn, items, extra, ends, self._writes)

    def _explain_error(self, exc: BaseException, doing: str) -> StoreError:
        err = _explain(self.path, exc, doing)
        # a connection lost or refused, a server shutting down; not a serialization failure, a
        # deadlock or a cancelled statement (one transaction's bad luck, the database answers)
        if isinstance(exc, psycopg.OperationalError) and not isinstance(
                exc, (psycopg.errors.TransactionRollback, psycopg.errors.QueryCanceled)):
            self.outage.down(err)
        return err

    def _transient(self, exc: BaseException) -> bool:
        # connection lost, server shutting down, serialization or deadlock: may pass
        return isinstance(exc, psycopg.OperationalError)

    # ------------------------------------------------------------------ writes with SQL of their own

    def put_policy(self, version: str, source: str, path: str, now: float) -> None:
        self.write(lambda c: c.execute(
            "INSERT INTO policies (version, source, path, stored_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
            (version, source, path, now)))

    async def purge(self, now: float, retention_s: float, idempotency_ttl_s: float, keep_policy: str,
                    limit: int = 5000, forget: Callable[[list[str]], None] | None = None) -> int:
        """As the SQLite store's purge (see there); ids are deleted with `= ANY(array)`."""

        def select(conn: _Conn) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE status != 'pending' AND finished_at < ? LIMIT ?",
                (now - retention_s, limit)).fetchall()]

        chosen: list[str] = list(await self.call(select))
        if forget is not None and chosen:
            forget(chosen)

        def op(conn: _Conn) -> int:
            if chosen:
                conn.execute("DELETE FROM event_log WHERE message_id = ANY(?)", (chosen,))
                conn.execute("DELETE FROM attempts WHERE message_id = ANY(?)", (chosen,))
                conn.execute("DELETE FROM messages WHERE id = ANY(?)", (chosen,))
            conn.execute("DELETE FROM idempotency WHERE created_at < ?", (now - idempotency_ttl_s,))
            # Not the policy another live process runs (it names it at each renewal), nor one
            # stored in the last hour (a reload elsewhere, before that process's next renewal):
            # its messages would resume under the wrong policy after a takeover.
            conn.execute("DELETE FROM policies WHERE version != ? AND stored_at < ? AND version NOT IN "
                         "(SELECT DISTINCT policy_version FROM messages) AND version NOT IN (SELECT policy_version "
                         "FROM nodes WHERE policy_version IS NOT NULL AND lease_until >= now())",
                         (keep_policy, now - _POLICY_GRACE_S))
            return len(chosen)

        return int(await self.call(op))

    # ------------------------------------------------------------------ reads

    async def load_pending(self) -> list[StoredMessage]:
        """The pending messages no live process owns (their lease expired, or was released by a
        clean stop), claimed for this process, with their attempts and events, oldest first;
        claimed CLAIM_BATCH at a time. Another process's messages are not touched."""
        out: list[StoredMessage] = []
        while True:
            got = list(await self.call(lambda conn: lease.claim(conn, self.node, self.lease_s, CLAIM_BATCH)))
            out.extend(got)
            if len(got) < CLAIM_BATCH:
                return out

    def shift_times(self, delta: float, keys_since: float) -> None:
        """As the SQLite store's, for this process's own messages and keys only (the others'
        processes follow their own clocks)."""
        node = self.node

        def op(conn: _Conn) -> None:
            conn.execute("UPDATE messages SET accepted_at = accepted_at + ?, message_deadline = message_deadline + ? "
                         "WHERE status = 'pending' AND owner = ?", (delta, delta, node))
            conn.execute("UPDATE attempts SET started_at = started_at + ?, deadline = deadline + ?, "
                         "ended_at = ended_at + ? WHERE message_id IN "
                         "(SELECT id FROM messages WHERE status = 'pending' AND owner = ?)", (delta, delta, delta, node))
            conn.execute("UPDATE idempotency SET created_at = created_at + ? WHERE created_at >= ? AND message_id IN "
                         "(SELECT id FROM messages WHERE owner = ?)", (delta, keys_since, node))

        self.write(op)

    async def policy_source(self, version: str) -> tuple[str, str] | None:
        def op(conn: _Conn) -> tuple[str, str] | None:
            r = conn.execute("SELECT source, path FROM policies WHERE version = ?", (version,)).fetchone()
            return None if r is None else (str(r[0]), str(r[1]))

        return await self.call(op)

    def _select(self, sql: str, args: tuple[Any, ...], doing: str) -> list[tuple[Any, ...]]:
        """A read on the calling thread (its own connection, autocommit: committed data only)."""
        reader = self._reader
        if reader is None or self._thread is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        with self._read_lock:
            for again in (True, False):
                try:
                    return list(reader.execute(sql, args).fetchall())
                except psycopg.OperationalError as e:
                    # A connection the server closed (a restart, a failover) is only known to be
                    # broken once used: one more try on a new connection (ensure() makes it).
                    raw = reader.raw
                    if again and raw is not None and (raw.closed or raw.broken):
                        continue
                    raise _explain(self.path, e, doing) from None
                except psycopg.Error as e:
                    raise _explain(self.path, e, doing) from None
            raise AssertionError("unreachable")

    def read_one(self, sql: str, args: tuple[Any, ...], doing: str) -> tuple[Any, ...] | None:
        rows = self._select(sql, args, doing)
        return tuple(rows[0]) if rows else None

    def has_table(self, name: str) -> bool:
        return self.read_one("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                             "AND table_name = ?", (name,), "read the schema") is not None

    def get_message(self, message_id: str) -> StoredMessage | None:
        r = self._select(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,), "read a message")
        if not r:
            return None
        atts = [AttemptRow(*a) for a in self._select(
            f"SELECT {_ATT_READ} FROM attempts WHERE message_id = ? ORDER BY started_at, attempt_id",
            (message_id,), "read a message")]
        evs: list[EventRow] = []
        for (text,) in self._select("SELECT events FROM event_log WHERE message_id = ? ORDER BY seq",
                                  (message_id,), "read a message"):
            evs.extend(_events(message_id, text))
        return StoredMessage(MessageRow(*r[0]), atts, evs)

    def get_attempt(self, attempt_id: str) -> AttemptRow | None:
        r = self.read_one(f"SELECT {_ATT_READ} FROM attempts WHERE attempt_id = ?", (attempt_id,), "read an attempt")
        return None if r is None else AttemptRow(*r)

    def attempt_by_vendor_id(self, provider: str, provider_message_id: str) -> AttemptRow | None:
        r = self.read_one(f"SELECT {_ATT_READ} FROM attempts WHERE provider = ? AND provider_message_id = ? "
                          "ORDER BY started_at DESC LIMIT 1", (provider, provider_message_id), "read an attempt")
        return None if r is None else AttemptRow(*r)

    def get_request(self, message_id: str) -> str | None:
        r = self.read_one("SELECT request FROM messages WHERE id = ?", (message_id,), "read a message")
        return None if r is None else str(r[0])

    def list_message_ids(self, before: str | None, limit: int, status: str | None = None,
                         recipient: str | None = None) -> list[str]:
        sql, args = _list_query(before, limit, status, recipient, _RECIPIENT_SQL)
        return [str(r[0]) for r in self._select(sql, tuple(args), "list messages")]

    def counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._select("SELECT status, count(*) FROM messages GROUP BY status",
                                                      (), "count messages")}

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        if self.is_open:
            # a clean close: this process routes nothing any more, so its pending messages may
            # be taken over at once rather than when their leases run out (written last)
            node = self.node
            self.write(lambda c: lease.release(c, node))
        await super().close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _events(message_id: str, text: str) -> list[EventRow]:
    return [EventRow(message_id, t, at, data) for t, at, data in json.loads(text)]
