"""Ownership of pending messages by lease, on the PostgreSQL store (docs/scaling.md "Leases").

Several routingd processes share one database. Each pending message row names its owner (a
process's node id, `new_node_id()`); the owner's lease is its row in `nodes` (`lease_until`, on
the database's clock: no skew between machines), which covers every message it owns. The owner
renews it with one UPDATE of one row every lease/3 (renewing a lease per message row cost
~20-46 us a row here: 2-4.6 s for 100 000 pending messages, longer than the renewal interval;
docs/performance.md). A process takes over messages whose owner's lease expired with
`SELECT ... FOR UPDATE SKIP LOCKED` (a bounded batch, never a message of a live process) and
resumes them as a start resumes (runtime.py Router._resume). Receipts and cancels for a message
another process owns are handed to it through the `handoffs` table (daemon/cluster.py).

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


def register(conn: Any, node: str, lease_s: float) -> None:
    """This process's node row, with a fresh lease: written at open, before any message names it
    (a message whose owner has no live node row is taken over). Node rows that expired a day
    ago and own nothing pending are deleted on the way."""
    conn.execute(f"INSERT INTO nodes (node, lease_until) VALUES (?, {_LEASE}) "
                 "ON CONFLICT (node) DO UPDATE SET lease_until = excluded.lease_until", (node, lease_s))
    conn.execute("DELETE FROM nodes n WHERE lease_until < now() - interval '1 day' AND NOT EXISTS "
                 "(SELECT 1 FROM messages m WHERE m.owner = n.node AND m.status = 'pending')")


def claim(conn: Any, node: str, lease_s: float, limit: int) -> list[StoredMessage]:
    """Take up to `limit` pending messages no live process owns (their node's lease expired, or
    they have no owner: rows of schema 1), oldest first. The dead nodes' rows are locked first
    (SKIP LOCKED: another claimer's are left to it), so that a node renewing late (renew())
    waits for this claim to commit and then sees what it lost (taken_from())."""
    dead = [str(r[0]) for r in conn.execute(
        "SELECT node FROM nodes WHERE lease_until < now() AND node != ? FOR UPDATE SKIP LOCKED", (node,)).fetchall()]
    rows = conn.execute(
        "WITH c AS (SELECT id FROM messages WHERE status = 'pending' AND (owner = ANY(?) OR owner IS NULL) "
        "ORDER BY accepted_at LIMIT ? FOR UPDATE SKIP LOCKED) "
        f"UPDATE messages m SET owner = ? FROM c WHERE m.id = c.id RETURNING {_M_COLS}",
        (dead, limit, node)).fetchall()
    msgs = sorted((MessageRow(*r) for r in rows), key=lambda m: (m.accepted_at, m.id))
    return with_details(conn, msgs)


def renew(conn: Any, node: str, lease_s: float, policy_version: str | None = None) -> bool:
    """Extend this node's lease: one UPDATE of one row, whatever the number of messages it owns.
    False: the lease had not run out, so nothing was taken. True: it ran out (the process
    stalled, or could not reach the database) and the node is live again from this commit on;
    what was taken over meanwhile (a claim holding its node row was waited for) is for
    taken_from() to read once this has committed. `policy_version`: the policy the process runs,
    which the retention purge keeps while the lease runs (PgStore.purge)."""
    if conn.execute(f"UPDATE nodes SET lease_until = {_LEASE}, policy_version = coalesce(?, policy_version) "
                    "WHERE node = ? AND lease_until >= now() RETURNING node",
                    (lease_s, policy_version, node)).fetchone() is not None:
        return False
    register(conn, node, lease_s)
    conn.execute("UPDATE nodes SET policy_version = coalesce(?, policy_version) WHERE node = ?", (policy_version, node))
    return True


def taken_from(conn: Any, node: str, ids: list[str]) -> set[str]:
    """Of the messages `ids` (pending in this node's memory), those another process owns now:
    taken over while this node's lease had run out (daemon/cluster.py Cluster.renew)."""
    if not ids:
        return set()
    return {str(r[0]) for r in conn.execute(
        "SELECT id FROM messages WHERE id = ANY(?) AND owner IS DISTINCT FROM ?", (ids, node)).fetchall()}


def live_nodes(conn: Any) -> int:
    """How many processes hold a lease now (this one included once it has renewed): the
    processes that split each provider's rate limit (daemon/cluster.py). One indexed COUNT of
    the `nodes` table, which holds a row per process, not per message."""
    row = conn.execute("SELECT count(*) FROM nodes WHERE lease_until >= now()").fetchone()
    return int(row[0]) if row is not None else 0


def release(conn: Any, node: str) -> None:
    """A clean stop: this node's pending messages may be taken over at once."""
    conn.execute("UPDATE nodes SET lease_until = now() - interval '1 second' WHERE node = ?", (node,))


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
