"""How the writer writes a batch (writer.py `_run_batch` -> a store's `_apply_items` -> `_apply`).

Rows (message inserts, attempts, events, finish/run updates) arrive as plain tuples, gathered on
the event loop thread into one queue item per loop turn. `_apply` sorts a batch's rows per
statement -- message inserts, then attempt upserts (an attempt started and ended within the batch
is one row), events (one event_log row per message, its JSON encoded here, by `_encode`) and
message updates, each in queue order -- and hands each kind to a `_Writes`: the SQLite store's
writes them with multi-row `INSERT ... VALUES (...),(...)` statements in fixed chunk sizes (below),
the PostgreSQL store's (pg_writes._PgWrites) with one statement of arrays per kind. A closure (`call()`,
`write()`, `flush()`) or a keyed insert is a barrier: the rows gathered before it are written first.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from itertools import chain
from typing import Any

from pydantic_core import to_json as _to_json

from .sql import (_A_DETAIL, _A_ENDED_AT, _A_ID, _A_STATUS_CODE, _ATT_COLS, _M_FINISHED_AT, _M_ID,
                  _M_IDEMPOTENCY_KEY, _M_RUN, _MSG_COLS, _SQL_ATTEMPT, _SQL_INSERT, _update_sql)
from .writer import _ATTEMPT, _EVENT, _EVENTS, _FINISH, _FLUSH, _INSERT, _Item, _MARK, _ROWS, _RUN, _VENDOR_ID


def _encode(obj: Any) -> str:
    """Compact JSON of event data, anything else as str() (json.dumps(default=str) would give the
    same values back through json.loads). pydantic_core's Rust serializer, faster than the json
    module's C encoder at float formatting (docs/performance.md); non-ASCII is written as UTF-8, not \\u escapes, and
    Infinity/NaN as json.dumps writes them."""
    return _to_json(obj, fallback=str).decode()


# Rows are written with multi-row statements, INSERT ... VALUES (...),(...),...: one SQLite step
# (one release of the GIL, which the event loop thread wants back at once) per chunk of rows
# instead of one per row as with executemany. Each step releases the GIL, and getting it back
# can take until the event loop thread next lets go of it, so a batch should take few steps:
# rows go in chunks of powers of two (13 rows: 8 + 4 + 1), 7 statement shapes per table that stay
# in the connection's statement cache.
#
# A None parameter costs the sqlite3 module a failed adapter lookup that formats and clears an
# AttributeError (docs/performance.md "Figures behind code choices"), so the rows that are mostly NULL by
# construction -- a new message (finished_at, delivered_at, idempotency_key) and an attempt that
# has just started (ended_at, outcome, status_code, detail) -- have shapes with those NULLs written
# into the statement, and so has an ended attempt without detail: _NEW_MESSAGE, _ATTEMPT_START
# and _ATTEMPT_NO_DETAIL rows leave those columns out (_write_messages, _write_attempts).
_CHUNKS = (64, 32, 16, 8, 4, 2, 1)
_NEW_MESSAGE, _ATTEMPT_START, _ATTEMPT_NO_DETAIL = 100, 101, 102
_ATT_TAIL = _SQL_ATTEMPT[_SQL_ATTEMPT.index(" ON CONFLICT"):]
_MULTI_HEAD = {           # kind -> (statement head, one row's VALUES tuple, tail)
    _INSERT: (f"INSERT INTO messages ({_MSG_COLS}) VALUES ", "(?,?,?,?,?,?,?,?,?,?,?)", ""),
    _NEW_MESSAGE: (f"INSERT INTO messages ({_MSG_COLS}) VALUES ", "(?,?,?,?,?,?,?,NULL,NULL,NULL,?)", ""),
    _ATTEMPT: (f"INSERT INTO attempts ({_ATT_COLS}) VALUES ", "(?,?,?,?,?,?,?,?,?,?,?)", _ATT_TAIL),
    _ATTEMPT_START: (f"INSERT INTO attempts ({_ATT_COLS}) VALUES ", "(?,?,?,?,?,?,?,NULL,NULL,NULL,NULL)", _ATT_TAIL),
    _ATTEMPT_NO_DETAIL: (f"INSERT INTO attempts ({_ATT_COLS}) VALUES ", "(?,?,?,?,?,?,?,?,?,?,NULL)", _ATT_TAIL),
    _EVENT: ("INSERT INTO event_log (message_id, events) VALUES ", "(?,?)", ""),
}


@functools.lru_cache(maxsize=64)
def _multi_sql(kind: int, n: int) -> str:
    if kind == _FINISH:     # UPDATE ... FROM (VALUES ...): ids must be distinct within one statement
        values = ",".join(["(?,?,?,?)"] * n)
        return (f"UPDATE messages SET status = v.column1, finished_at = v.column2, delivered_at = v.column3 "
                f"FROM (VALUES {values}) AS v WHERE messages.id = v.column4")
    head, row, tail = _MULTI_HEAD[kind]
    return head + ",".join([row] * n) + tail


_flatten = chain.from_iterable


def _write_messages(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """New message rows: those with no finished_at, delivered_at and idempotency_key (all but
    odd ones) as _NEW_MESSAGE, without binding the three NULLs (see _MULTI_HEAD)."""
    short: list[tuple] = []
    full: list[tuple] = []
    for r in rows:
        if r[_M_FINISHED_AT] is None and r[_M_FINISHED_AT + 1] is None and r[_M_IDEMPOTENCY_KEY] is None:
            short.append(r[:_M_FINISHED_AT] + r[_M_RUN:])
        else:
            full.append(r)
    _multi(conn, _NEW_MESSAGE, short)
    _multi(conn, _INSERT, full)


def _write_attempts(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Attempt upserts (one per attempt id): the ones just started (no ended_at, outcome,
    status_code, detail) as _ATTEMPT_START, the others without a detail (most that ended: a
    success has none) as _ATTEMPT_NO_DETAIL, without binding those NULLs."""
    started: list[tuple] = []
    no_detail: list[tuple] = []
    full: list[tuple] = []
    for r in rows:
        if r[_A_DETAIL] is not None:
            full.append(r)
        elif r[_A_ENDED_AT] is None and r[_A_ENDED_AT + 1] is None and r[_A_STATUS_CODE] is None:
            started.append(r[:_A_ENDED_AT])
        elif r[_A_STATUS_CODE] is not None:
            no_detail.append(r[:_A_DETAIL])
        else:
            full.append(r)
    _multi(conn, _ATTEMPT_START, started)
    _multi(conn, _ATTEMPT_NO_DETAIL, no_detail)
    _multi(conn, _ATTEMPT, full)


def _multi(conn: sqlite3.Connection, kind: int, rows: list[tuple]) -> None:
    """Write `rows` (in order) with as few multi-row statements as the fixed chunk sizes allow."""
    i, n = 0, len(rows)
    for size in _CHUNKS:
        while n - i >= size:
            conn.execute(_multi_sql(kind, size), list(_flatten(rows[i:i + size])))
            i += size


def _insert_keyed(conn: sqlite3.Connection, row: tuple, not_before: float, now: float) -> str | None:
    """A message insert with an Idempotency-Key: the earlier message's id if the key is known."""
    key = row[_M_IDEMPOTENCY_KEY]
    hit = conn.execute("SELECT message_id, created_at FROM idempotency WHERE key = ?", (key,)).fetchone()
    if hit is not None and hit[1] >= not_before:
        return str(hit[0])
    conn.execute(_SQL_INSERT, row)
    conn.execute("INSERT OR REPLACE INTO idempotency (key, message_id, created_at) VALUES (?,?,?)",
                 (key, row[_M_ID], now))
    return None


class _Writes:
    """How a store writes what _apply gathered: SQLite with multi-row statements (docs/performance.md);
    pg_writes._PgWrites overrides each method, so that both stores share one gathering loop."""

    def messages(self, conn: Any, rows: list[tuple]) -> None:
        _write_messages(conn, rows)

    def attempts(self, conn: Any, rows: list[tuple]) -> None:
        _write_attempts(conn, rows)

    def events(self, conn: Any, rows: list[tuple]) -> None:
        _multi(conn, _EVENT, rows)

    def updates(self, conn: Any, kind: int, rows: list[tuple]) -> None:
        if kind == _FINISH and len({r[3] for r in rows}) == len(rows):
            _multi(conn, _FINISH, rows)
        else:
            conn.executemany(_update_sql(kind), rows)

    def insert_keyed(self, conn: Any, row: tuple, not_before: float, now: float) -> str | None:
        return _insert_keyed(conn, row, not_before, now)

    def refused(self, seen: tuple[str, int | None]) -> BaseException | None:
        """Why an insert whose accept assumed `seen` of its recipient's profile is refused, or
        None (interface.py; the SQLite store is one process: nothing to refuse)."""
        return None



_SQLITE_WRITES = _Writes()


def _apply(conn: Any, items: list[_Item], extra: list[tuple[asyncio.Future, Any]],
           ends: list[int] | None = None, writes: _Writes = _SQLITE_WRITES) -> list[Any]:
    """Run queued items inside the caller's transaction; one result per item, and (future,
    result) in `extra` for the message inserts and marks that came inside a _ROWS item (`ends`:
    len(extra) after each item, so that the futures can be resolved in queue order).

    Rows are gathered per statement and written (`writes`: how this store writes them) in order:
    message inserts first, then attempt upserts, events, and message updates (each in queue
    order). A closure (or a keyed insert, which must see every earlier key) first writes what
    was gathered, then runs."""
    values: list[Any] = []
    inserts: list[tuple] = []
    attempts: list[tuple] = []
    events: list[tuple[int, tuple]] = []
    updates: list[tuple[int, tuple]] = []

    def write_gathered() -> None:
        if inserts:
            writes.messages(conn, inserts)
            inserts.clear()
        if attempts:
            # An attempt that started and ended within one batch is one row: the last state, with
            # the last non-empty detail (what the upserts in a row would leave).
            merged: dict[str, tuple] = {}
            for a in attempts:
                prev = merged.get(a[_A_ID])
                if prev is not None and a[_A_DETAIL] is None and prev[_A_DETAIL] is not None:
                    a = a[:_A_DETAIL] + (prev[_A_DETAIL],)
                merged[a[_A_ID]] = a
            writes.attempts(conn, list(merged.values()))
            attempts.clear()
        if events:
            groups: dict[str, list[list[Any]]] = {}     # per message, in queue order
            for k, e in events:
                if k == _EVENT:
                    m, t, at, d = e
                    g = groups.get(m)
                    if g is None:
                        g = groups[m] = []
                    g.append([t, at, d])
                else:                            # _EVENTS: (message_id, [objects with .type .at .data])
                    m, evs = e
                    g = groups.get(m)
                    if g is None:
                        g = groups[m] = []
                    g.extend([ev.type, ev.at, ev.data] for ev in evs)
            writes.events(conn, [(m, _encode(g)) for m, g in groups.items()])
            events.clear()
        if updates:
            i = 0
            while i < len(updates):          # consecutive updates of one kind together
                kind = updates[i][0]
                j = i
                while j < len(updates) and updates[j][0] == kind:
                    j += 1
                writes.updates(conn, kind, [u[1] for u in updates[i:j]])
                i = j
            updates.clear()

    def insert(payload: tuple) -> str | BaseException | None:
        row, not_before, now, ahead, seen = payload
        if seen is not None:
            refused = writes.refused(seen)
            if refused is not None:     # not stored: its future raises (ProfileChanged)
                return refused
        if row[_M_IDEMPOTENCY_KEY] is None:
            inserts.append(row)
            if ahead:
                attempts.extend(ahead)
            return None
        write_gathered()             # a keyed insert must see every key written before it
        earlier = writes.insert_keyed(conn, row, not_before, now)
        if earlier is None and ahead:   # an idempotent replay stores nothing, its attempts neither
            attempts.extend(ahead)
        return earlier

    for kind, payload, _fut in items:
        value = None
        if kind == _ROWS:
            for k, row in payload:
                if k == _EVENT or k == _EVENTS:
                    events.append((k, row))
                elif k == _ATTEMPT:
                    attempts.append(row)
                elif k == _INSERT:
                    v = insert(row[0])
                    if row[1] is not None:
                        extra.append((row[1], v))
                elif k == _MARK:            # committed(): resolved after this transaction commits
                    extra.append((row, None))
                else:
                    updates.append((k, row))
        elif kind == _EVENT or kind == _EVENTS:
            events.append((kind, payload))
        elif kind == _ATTEMPT:
            attempts.append(payload)
        elif kind == _INSERT:
            value = insert(payload)
        elif kind == _FINISH or kind == _RUN or kind == _VENDOR_ID:
            updates.append((kind, payload))
        elif kind == _MARK or kind == _FLUSH:
            pass                             # nothing to write: its future resolves with the commit
        else:
            write_gathered()
            value = payload(conn)
        values.append(value)
        if ends is not None:
            ends.append(len(extra))
    write_gathered()
    return values
