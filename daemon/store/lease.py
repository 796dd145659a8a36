"""Ownership of pending messages by lease, on the PostgreSQL store (docs/scaling.md "Leases").

Several routingd processes share one database. Each pending message row names its owner (a
process's node id, `new_node_id()`) and a lease expiry (`lease_until`, the database's clock:
no skew between machines). The owner renews all its leases with one UPDATE every lease/3; a
process takes over messages whose lease expired with `SELECT ... FOR UPDATE SKIP LOCKED` (a
bounded batch, never a message another live process renews), and resumes them as a start
resumes (runtime.py Router._resume). Receipts and cancels for a message another process owns
are handed to it through the `handoffs` table (daemon/cluster.py).

This module is SQL and nothing else: functions of a connection taking `?` placeholders (the
store's `_Conn`), and `LeaseBook`, the side connection the cluster loop runs them on (its own
thread and transaction, so a renewal never waits behind the writer's backlog).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import threading
from typing import Any, Callable, TypeVar

from .interface import StoreError
from .rows import AttemptRow, EventRow, MessageRow, StoredMessage
from .sqlite import _ATT_READ, _MSG_COLS

T = TypeVar("T")

_M_COLS = ", ".join("m." + c.strip() for c in _MSG_COLS.split(","))
_LEASE = "now() + make_interval(secs => ?)"


def new_node_id() -> str:
    """This process's owner name on message rows: host, pid and a random part (a restarted
    process, or a pid reused on another boot, is never taken for the one before it)."""
    return f"{socket.gethostname()[:64]}/{os.getpid()}/{secrets.token_hex(4)}"


def with_details(conn: Any, msgs: list[MessageRow]) -> list[StoredMessage]:
    """The messages with their attempts and events (two queries), in the order given."""
    by_id = {m.id: StoredMessage(m, [], []) for m in msgs}
    if not by_id:
        return []
    ids = list(by_id)
    for r in conn.execute(f"SELECT {_ATT_READ} FROM attempts WHERE message_id = ANY(?) "
                          "ORDER BY started_at, attempt_id", (ids,)).fetchall():
        by_id[r[1]].attempts.append(AttemptRow(*r))
    for m, text in conn.execute("SELECT message_id, events FROM event_log WHERE message_id = ANY(?) "
                                "ORDER BY seq", (ids,)).fetchall():
        by_id[m].events.extend(EventRow(m, t, at, data) for t, at, data in json.loads(text))
    return list(by_id.values())


def claim(conn: Any, node: str, lease_s: float, limit: int) -> list[StoredMessage]:
    """Take up to `limit` pending messages whose lease expired (or that never had one: rows of
    schema 1, or released by a clean stop), oldest first, and own them for `lease_s`. Rows
    another transaction is claiming are skipped, not waited for; this node's own rows are never
    claimed (it still routes them: its renewal only came late)."""
    rows = conn.execute(
        "WITH c AS (SELECT id FROM messages WHERE status = 'pending' "
        "AND (lease_until IS NULL OR lease_until < now()) AND owner IS DISTINCT FROM ? "
        "ORDER BY accepted_at LIMIT ? FOR UPDATE SKIP LOCKED) "
        f"UPDATE messages m SET owner = ?, lease_until = {_LEASE} FROM c WHERE m.id = c.id "
        f"RETURNING {_M_COLS}", (node, limit, node, lease_s)).fetchall()
    msgs = sorted((MessageRow(*r) for r in rows), key=lambda m: (m.accepted_at, m.id))
    return with_details(conn, msgs)


def renew(conn: Any, node: str, lease_s: float) -> set[str]:
    """Extend every lease of this node (one UPDATE); the ids it still owns."""
    return {str(r[0]) for r in conn.execute(
        f"UPDATE messages SET lease_until = {_LEASE} WHERE owner = ? AND status = 'pending' RETURNING id",
        (lease_s, node)).fetchall()}


def release(conn: Any, node: str) -> int:
    """A clean stop: this node's pending messages may be taken over at once."""
    cur = conn.execute("UPDATE messages SET lease_until = NULL WHERE owner = ? AND status = 'pending'", (node,))
    return int(cur.rowcount or 0)


def owner(conn: Any, message_id: str) -> tuple[str, str | None] | None:
    r = conn.execute("SELECT status, owner FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if r is None else (str(r[0]), r[1])


SQL_HAND_OFF = "INSERT INTO handoffs (message_id, kind, provider, attempt_id, status) VALUES (?,?,?,?,?)"

# (seq, message_id, kind, provider, attempt_id, status, the message's status or None if purged)
Handoff = tuple[int, str, str, str | None, str | None, str | None, str | None]


def handoffs(conn: Any, node: str, orphan_after_s: float, limit: int = 500) -> list[Handoff]:
    """The handoffs this node should apply: those of messages it owns, and those nobody else
    will: of a message that finished (or was purged) while its owner died, once `orphan_after_s` old."""
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        "SELECT h.seq, h.message_id, h.kind, h.provider, h.attempt_id, h.status, m.status "
        "FROM handoffs h LEFT JOIN messages m ON m.id = h.message_id "
        "WHERE m.owner = ? OR ((m.id IS NULL OR m.status != 'pending') "
        "AND h.created_at < now() - make_interval(secs => ?)) ORDER BY h.seq LIMIT ?",
        (node, orphan_after_s, limit)).fetchall()]


def drop_handoffs(conn: Any, seqs: list[int]) -> None:
    conn.execute("DELETE FROM handoffs WHERE seq = ANY(?)", (seqs,))


class LeaseBook:
    """The cluster loop's own connection (made by `connect`, the store's), used from a worker
    thread one call at a time; each call is one transaction."""

    def __init__(self, connect: Callable[[], Any], explain: Callable[[BaseException, str], StoreError]) -> None:
        self._connect = connect
        self._explain = explain
        self._conn: Any = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[Any], T], doing: str) -> T:
        return await asyncio.to_thread(self._run, fn, doing)

    def _run(self, fn: Callable[[Any], T], doing: str) -> T:
        import psycopg              # here: importing this module (runtime.py does) loads no driver
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                conn.execute("BEGIN")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                    return out
                except BaseException:
                    raw = conn.raw
                    if raw is not None and not raw.closed and not raw.broken:
                        raw.execute("ROLLBACK")
                    raise
            except psycopg.Error as e:
                raise self._explain(e, doing) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
