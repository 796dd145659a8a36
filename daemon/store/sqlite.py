"""The durable store: one SQLite file in WAL mode, written by a single thread with group commit.

Tables
    messages     id, request (the SendRequest JSON), route, policy_version, status (pending |
                 delivered | undeliverable | expired), accepted_at, message_deadline, finished_at,
                 delivered_at (seconds since the epoch), idempotency_key, run (resume count)
    attempts     one row per provider attempt (upserted as it starts, is accepted, ends), with
                 the vendor's id for the message (provider_message_id, set once the vendor
                 answered; receipts find their attempt by it; schema 3)
    event_log    the engine's event log per message: each row a JSON array of [type, at, data]
                 events, one row per message per writer batch (a message's ~7 events usually take
                 one or two rows; schema 2)
    events       the same, one row per event (type, at, data JSON): written by schema 1, still
                 read (before event_log) and purged
    policies     version -> routing.toml source text, so a resumed message gets the policy
                 snapshot it was accepted under
    idempotency  key -> message_id, created_at; kept at least `idempotency_ttl`

Writes go through one writer thread fed by a queue. The thread takes every operation that is
waiting, runs them in ONE transaction and commits once (group commit): many concurrent
`insert_message` calls share one fsync, and each caller's future resolves only after the commit
that holds its row (the futures of a batch with one wake-up of the event loop).

Rows (message inserts, attempts, events, finish/run updates) are plain tuples gathered on the
event loop thread and handed to the writer as ONE queue item at the end of the loop turn (or
before the next closure), so a message costs the loop a list append per write. The writer
sorts a batch's rows per statement and writes each with multi-row `INSERT ... VALUES
(...),(...)` statements in fixed chunk sizes -- message inserts, then attempt upserts (an
attempt started and ended within the batch is one row), events (one event_log row per message)
and message updates, each in queue order -- and encodes the events' JSON itself. A closure
(`call()`, `write()`, `flush()`) or a keyed insert is a barrier: the rows queued before it are
written first. `committed()` is a future that resolves with the commit of the rows queued
before it (no commit of its own): the Router awaits it before each provider call, so an
attempt's row is always on disk before its call goes out. Write methods are called on the
event loop thread only.

Durability: journal_mode=WAL with synchronous=FULL (the default here): a commit is fsynced
before `insert_message` returns, so a 202 survives power loss. synchronous=NORMAL in WAL mode
also survives a crash or SIGKILL of the process (the WAL is in the OS page cache) but may
lose the last commits on power loss or an OS crash; it is offered as `synchronous="NORMAL"`.
With group commit the fsync is shared by a whole batch, so FULL costs little under load
(see tests/test_store.py::test_group_commit_shares_commits).

Reads for the status endpoint run on the caller's thread on a second connection (WAL readers
never block the writer and see only committed data).

A write that fails (the disk is full, refuses a write, or the file is locked) is never
dropped: a caller who waits for it (a message insert, `call()`) gets the StoreError (a send
answers 503); a write nobody waits for (attempt rows, events, a message's terminal status) is
kept in the writer's backlog, in queue order with every later such write and `committed()`
mark, and written when the store can write again (the writer retries it every _RETRY_S even
with nothing new to write). `backlog` counts them; past `max_backlog` the Router refuses new
sends (`backlog_full`) rather than grow it further; `close()` logs what it could not store and
leaves `backlog` > 0 (the daemon then exits non-zero). Only a row SQLite will never take (a
constraint error: a bug) is dropped, with an error line. See docs/reliability.md.

A lock file (`<state>.lock`, flock) keeps a second routingd from resuming the same messages.
Every failure to open or write the file is a `StoreError` naming the path and what to do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
from itertools import chain
from typing import Any, Callable, Final

from pydantic_core import to_json as _to_json

from .interface import StoreError
from .rows import AttemptRow, EventRow, MessageRow, StoredMessage

log = logging.getLogger("routingd.store")

SCHEMA_VERSION = 3         # 2: event_log (1 -> 2 needs only the new table; see _SCHEMA)
                           # 3: attempts.provider_message_id (added in place: _migrate)
_MAX_BATCH = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id               TEXT PRIMARY KEY,
    request          TEXT NOT NULL,
    route            TEXT NOT NULL,
    policy_version   TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    accepted_at      REAL NOT NULL,
    message_deadline REAL NOT NULL,
    finished_at      REAL,
    delivered_at     REAL,
    idempotency_key  TEXT,
    run              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages(accepted_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS messages_finished ON messages(finished_at) WHERE status != 'pending';
CREATE TABLE IF NOT EXISTS attempts (
    attempt_id   TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL,
    channel      TEXT NOT NULL,
    provider     TEXT NOT NULL,
    try_no       INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    deadline     REAL NOT NULL,
    outcome      TEXT,
    status_code  INTEGER,
    detail       TEXT,
    provider_message_id TEXT
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts(message_id);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    at         REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id, seq);
CREATE TABLE IF NOT EXISTS event_log (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    events     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_log_message ON event_log(message_id, seq);
CREATE TABLE IF NOT EXISTS policies (
    version    TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    path       TEXT NOT NULL,
    stored_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key        TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created_at);
"""
# After _migrate: the column exists in every state file by then.
_SCHEMA_AFTER = """
CREATE INDEX IF NOT EXISTS attempts_vendor ON attempts(provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
"""


def _explain(path: str, exc: BaseException, doing: str) -> StoreError:
    text = str(exc)
    low = text.lower()
    if "unable to open" in low:
        return StoreError(path, f"cannot {doing}: {text}",
                          "check that the directory exists and is writable by routingd "
                          "(set [daemon] state, ROUTINGD_STATE or --state)")
    if "readonly" in low or "read-only" in low or isinstance(exc, PermissionError):
        return StoreError(path, f"cannot {doing}: the file or its directory is read-only ({text})",
                          "give routingd write access to the file and its directory (SQLite's WAL "
                          "creates PATH-wal and PATH-shm beside it)")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(path, f"cannot {doing}: not a routingd SQLite database or it is corrupt ({text})",
                          "move the file aside to start with an empty store, or restore a backup "
                          "(`sqlite3 PATH .recover` may save its rows)")
    if "locked" in low or "busy" in low:
        return StoreError(path, f"cannot {doing}: the database is locked by another process ({text})",
                          "stop the other process that uses this state file")
    if "full" in low:
        return StoreError(path, f"cannot {doing}: the disk is full ({text})", "free disk space")
    if "disk i/o error" in low:
        return StoreError(path, f"cannot {doing}: the file system refused a write or read ({text})",
                          "check free space (df), file size limits (ulimit -f / LimitFSIZE=) and the "
                          "kernel log for a failing disk")
    return StoreError(path, f"cannot {doing}: {text}")


_MSG_COLS = ("id, request, route, policy_version, status, accepted_at, message_deadline, finished_at, "
             "delivered_at, idempotency_key, run")
_ATT_COLS = ("attempt_id, message_id, channel, provider, try_no, started_at, deadline, ended_at, outcome, "
             "status_code, detail")
_ATT_READ = _ATT_COLS + ", provider_message_id"    # written apart from the upserts (set_provider_message_id)
# positions in a message row (_MSG_COLS order) and in an attempt row (_ATT_COLS order)
_M_ID: Final = 0
_M_FINISHED_AT: Final = 7       # then delivered_at, idempotency_key: the three NULLs of a new message
_M_IDEMPOTENCY_KEY: Final = 9
_M_RUN: Final = 10
_A_ID: Final = 0
_A_ENDED_AT: Final = 7          # then outcome, status_code: the three NULLs of a started attempt
_A_STATUS_CODE: Final = 9
_A_DETAIL: Final = 10


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


# --------------------------------------------------------------------------- the store

_Op = Callable[[Any], Any]   # fn(conn): a sqlite3.Connection here, the PostgreSQL store's _Conn there
_CLOSE = object()

# Queue items: (kind, payload, future or None); a _ROWS payload is a list of (kind, row).
_CALL: Final = 0           # run a closure on the connection
_INSERT: Final = 1         # a message row (with its first attempts' rows)
_ATTEMPT: Final = 2        # an attempt row (upsert)
_EVENT: Final = 3          # one event
_FINISH: Final = 4         # a message's final status
_RUN: Final = 5            # a message's run number
_ROWS: Final = 6           # a list of (kind, row)
_EVENTS: Final = 7         # one command list's events
_MARK: Final = 8           # committed(): resolved once what is queued before it is committed
_FLUSH: Final = 9          # flush(): the same, waited for
_VENDOR_ID: Final = 10     # a vendor's message id for an attempt (set_provider_message_id)
_RETRY_S = 0.5             # how often the writer tries its backlog again while the disk refuses
_Item = tuple[int, Any, "asyncio.Future[Any] | None"]

_SQL_INSERT = f"INSERT INTO messages ({_MSG_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_SQL_ATTEMPT = (f"INSERT INTO attempts ({_ATT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(attempt_id) DO UPDATE SET ended_at=excluded.ended_at, outcome=excluded.outcome, "
                "status_code=excluded.status_code, detail=COALESCE(excluded.detail, attempts.detail)")
_SQL_FINISH = "UPDATE messages SET status = ?, finished_at = ?, delivered_at = ? WHERE id = ?"
_SQL_RUN = "UPDATE messages SET run = ? WHERE id = ?"
_SQL_VENDOR_ID = "UPDATE attempts SET provider_message_id = ? WHERE attempt_id = ?"


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


# list_message_ids' recipient filter: the request's to.user_id, to.email or to.phone_number
_RECIPIENT_SQL = ("json_extract(request, '$.message.to.user_id'), json_extract(request, '$.message.to.email'), "
                  "json_extract(request, '$.message.to.phone_number')")


def _list_query(before: str | None, limit: int, status: str | None, recipient: str | None,
                recipient_sql: str) -> tuple[str, list[Any]]:
    """list_message_ids' statement and arguments, for both stores (`recipient_sql`: the three
    request fields a recipient is looked for in, in the store's SQL)."""
    sql = "SELECT id FROM messages WHERE 1 = 1"
    args: list[Any] = []
    if before is not None:
        sql += " AND id < ?"
        args.append(before)
    if status is not None:
        sql += " AND status = ?"
        args.append(status)
    if recipient is not None:
        sql += f" AND ? IN ({recipient_sql})"
        args.append(recipient)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return sql, args

class _Writes:
    """How a store writes what _apply gathered: SQLite with multi-row statements (docs/performance.md);
    postgres._PgWrites overrides each method, so that both stores share one gathering loop."""

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


def _update_sql(kind: int) -> str:
    return _SQL_FINISH if kind == _FINISH else _SQL_VENDOR_ID if kind == _VENDOR_ID else _SQL_RUN


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

    def insert(payload: tuple) -> str | None:
        row, not_before, now, ahead = payload
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


class Store:
    """The SQLite state file. `await open()` first; `await close()` last."""

    def __init__(self, path: str, synchronous: str = "FULL", busy_timeout_s: float = 5.0,
                 max_backlog: int = 50_000) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = os.path.abspath(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ro: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rows: list[tuple[int, Any]] = []       # rows not yet handed to the writer (see _row)
        self.commits = 0           # transactions committed (group commit: << operations)
        self.operations = 0
        self.write_errors = 0
        self.last_error: StoreError | None = None
        # Writes that failed and that nobody waits for (see _run_batch), in queue order: the
        # writer thread's own list; `backlog` is its length as of the last batch, for the loop.
        self._backlog: list[_Item] = []
        self._backlog_logged = False
        self.backlog = 0
        self.max_backlog = max_backlog

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    @property
    def backlog_full(self) -> bool:
        """So many writes wait for the disk that no new message should be accepted (they would
        add more): the Router answers sends 503 until the backlog is written."""
        return self.backlog >= self.max_backlog

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._check_dir()
        self._lock()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._writer, args=(ready,), name="routingd-store", daemon=True)
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
            self._ro = self._connect(query_only=True)
        except BaseException:
            self._unlock()
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        self._hand_over()
        self._q.put(_CLOSE)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None
        if self._ro is not None:
            self._ro.close()
            self._ro = None
        self._unlock()

    def _check_dir(self) -> None:
        d = os.path.dirname(self.path) or "."
        if not os.path.isdir(d):
            existing = d
            while existing and not os.path.lexists(existing) and os.path.dirname(existing) != existing:
                existing = os.path.dirname(existing)
            if existing and os.path.lexists(existing) and not os.path.isdir(existing):
                raise StoreError(self.path, f"{existing} is a file, not a directory",
                                 "point [daemon] state / --state at a file inside a writable directory")
            raise StoreError(self.path, f"directory {d} does not exist",
                             "create it or point [daemon] state / --state at a writable directory")
        if os.path.isdir(self.path):
            raise StoreError(self.path, "is a directory", "name a file inside it, e.g. routingd.db")

    def _lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(self.path, f"cannot create the lock file {lock_path}: {e.strerror}",
                             "give routingd write access to the state directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A clean stop removes the lock file (_unlock): if that happened between our open
            # and our flock, we hold a lock on a removed file, which guards nothing.
            if os.fstat(fd).st_ino != os.stat(lock_path).st_ino:
                raise OSError("lock file replaced")
        except OSError:
            os.close(fd)
            raise StoreError(self.path, "is in use by another routingd process (its lock file "
                             f"{lock_path} is held)", "stop the other daemon or give this one its own "
                             "--state file") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                # Removed while still held, so a clean stop leaves no routingd.db.lock behind
                # (docs/operations.md "Backup"); a crash leaves it, harmless: flock dies with us.
                with contextlib.suppress(OSError):
                    os.unlink(self.path + ".lock")
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _connect(self, query_only: bool = False) -> sqlite3.Connection:
        if not query_only and self.path != ":memory:":
            # Made 0600 before SQLite opens it, whatever the umask: it holds recipients and
            # contents, and SQLite gives the -wal and -shm files the mode of the database file.
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError:
                pass                # sqlite3.connect reports the reason below
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_s)
        except sqlite3.Error as e:
            raise _explain(self.path, e, "open the database") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if query_only:
                conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as e:
            conn.close()
            raise _explain(self.path, e, "read the database") from None
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(self.path, f"cannot switch the database to WAL mode (got {mode!r})",
                             "keep the state file on a local file system (not NFS)")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        have = conn.execute("PRAGMA user_version").fetchone()[0]
        if have > SCHEMA_VERSION:
            raise StoreError(self.path, f"was written by a newer routingd (schema {have}, this one knows "
                             f"{SCHEMA_VERSION})", "upgrade routingd or use another --state file")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):      # not executescript(): it would COMMIT first
            if statement.strip():
                conn.execute(statement)
        _migrate(conn)
        for statement in _SCHEMA_AFTER.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ the writer thread

    def _writer(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
            try:
                self._init_schema(conn)
            except sqlite3.Error as e:
                conn.close()
                raise _explain(self.path, e, "set up the database") from None
            except StoreError:
                conn.close()
                raise
        except BaseException as e:  # noqa: BLE001 - handed to the opener
            ready.set_exception(e)
            return
        ready.set_result(None)
        closing = False
        while not closing:
            try:
                # with a backlog, wake up now and then to try it again even if nothing new comes
                batch = [self._q.get(timeout=_RETRY_S if self._backlog else None)]
            except queue.Empty:
                batch = []
            while batch and len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if any(op is _CLOSE for op in batch):
                closing = True
                batch = [op for op in batch if op is not _CLOSE]
            if self._backlog:          # the writes kept from failed batches go first, in order
                batch = self._backlog + batch
                self._backlog = []
            if batch:
                self._run_batch(conn, batch)
            self.backlog = len(self._backlog)
        if self._backlog:
            log.error("state store: %d write(s) could not be stored before closing (%s)",
                      len(self._backlog), self.last_error)
        self._close_writer(conn)

    def _close_writer(self, conn: Any) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        conn.close()

    # The transaction and error hooks of the writer loop (_writer, _run_batch): the PostgreSQL
    # store (daemon/store/postgres.py) shares the loop and the queue and overrides these.

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

    def _run_batch(self, conn: Any, batch: list[_Item]) -> None:
        results: list[tuple[asyncio.Future | None, Any, BaseException | None]] = []
        try:
            self._begin(conn)
            extra: list[tuple[asyncio.Future, Any]] = []
            ends: list[int] = []
            values = self._apply_items(conn, batch, extra, ends)
            self._commit(conn)
            self.commits += 1
            if self._backlog_logged:
                log.info("state store: writing again; the kept writes are stored")
                self._backlog_logged = False
            # in queue order: a flush() resolves after every caller whose write came before it
            start = 0
            for item, value, end in zip(batch, values, ends):
                results += [(fut, v, None) for fut, v in extra[start:end]]
                start = end
                if item[2] is not None:
                    results.append((item[2], value, None))
        except Exception:  # noqa: BLE001 - retried one by one below to isolate the culprit
            self._rollback(conn)
            results = []
            # in queue order, each row of a _ROWS item on its own
            singles = [one for item in batch
                       for one in ([(k, row[0], row[1]) if k == _INSERT else (k, None, row) if k == _MARK
                                    else (k, row, None) for k, row in item[1]]
                                   if item[0] == _ROWS else [item])]
            keep = self._backlog
            for item in singles:
                kind, _, fut = item
                waited = fut is not None and kind != _MARK and kind != _FLUSH
                if keep and not waited:
                    # Behind a write that is kept, every later unwaited write (and committed()
                    # mark) is kept too, untried: their order matters (an attempt's end must not
                    # be overwritten by its start), and a mark means "everything before me is on
                    # disk". A flush() answers at once: it only waits for writes to be tried.
                    if kind == _FLUSH:
                        results.append((fut, None, None))
                    else:
                        keep.append(item)
                    continue
                try:
                    self._begin(conn)
                    value = self._apply_items(conn, [item], [], None)[0]
                    self._commit(conn)
                    self.commits += 1
                    results.append((fut, value, None))
                except Exception as e:  # noqa: BLE001
                    self._rollback(conn)
                    err = e if isinstance(e, StoreError) else self._explain_error(e, "read or write the database")
                    self.write_errors += 1
                    self.last_error = err
                    if waited:
                        results.append((fut, None, err))         # the caller is told (a send: 503)
                    elif self._transient(e) or kind == _MARK or kind == _FLUSH:
                        # The disk (full, I/O error, read-only, locked): nobody waits for this
                        # write, so it is kept, in order, and written when the store can write again.
                        if not keep and not self._backlog_logged:
                            log.error("state store write failed; keeping the writes that nobody waits "
                                      "for until it can write again: %s", err)
                        if kind == _FLUSH:
                            results.append((fut, None, None))
                        else:
                            keep.append(item)
                    else:
                        # A row the database will never take (a constraint): retrying cannot help.
                        log.error("state store write failed, the row is dropped: %s", err)
            if not keep and self._backlog_logged:
                log.info("state store: writing again; the kept writes are stored")
            self._backlog_logged = bool(keep)
        self.operations += len(batch)
        loop = self._loop
        if loop is None or not results:
            return
        try:
            loop.call_soon_threadsafe(_resolve_all, results)    # one wake-up for the whole batch
        except RuntimeError:   # the loop is closed: nobody waits any more
            pass

    def _put(self, kind: int, payload: Any, wait: bool = False) -> asyncio.Future | None:
        if self._thread is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        if self._rows:
            self._hand_over()          # FIFO: the rows queued before this item go first
        fut = self._loop.create_future() if wait and self._loop is not None else None
        self._q.put((kind, payload, fut))
        return fut

    def _row(self, kind: int, payload: Any) -> None:
        """Queue a fire-and-forget row (or a committed() mark). Rows gather on the loop thread and go to the writer as one
        item at the end of this turn of the event loop (or before the next item that is not a
        row), so a message's ~10 rows cost the loop a list append each, not a queue operation."""
        if self._thread is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        rows = self._rows
        if not rows:
            if self._loop is None:
                self._q.put((kind, payload, None))
                return
            self._loop.call_soon(self._hand_over)
        rows.append((kind, payload))

    def _hand_over(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._q.put((_ROWS, rows, None))

    async def call(self, fn: _Op) -> Any:
        """Run `fn(conn)` in the writer thread inside a transaction; return after its commit."""
        fut = self._put(_CALL, fn, wait=True)
        assert fut is not None
        return await fut

    def write(self, fn: _Op) -> None:
        """Queue `fn(conn)` for the writer thread (ordered, committed with the next batch)."""
        self._put(_CALL, fn)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed -- or, while the disk refuses
        writes, tried and kept in the backlog (`backlog` > 0; written when the disk takes writes
        again, or reported by close()). Never raises for a write error."""
        fut = self._put(_FLUSH, None, wait=True)
        assert fut is not None
        await fut

    # ------------------------------------------------------------------ writes

    def insert_message(self, row: MessageRow, idempotency_ttl_s: float, now: float,
                       attempts: list[tuple[Any, ...]] | None = None) -> asyncio.Future[str | None]:
        """Store a new message; await the answer: None once committed, or -- with an idempotency
        key that is already known (and younger than the TTL) -- the earlier message's id, and
        nothing stored. The insert rides with the rows of this loop turn (one queue item).

        `attempts`: rows (put_attempt_values() tuples) of the message's first attempts, written in
        the insert's own transaction -- all or none: not at all for an idempotent replay, and
        retried and failed together with the insert -- so those calls can go out right after the
        commit the 202 waits for anyway, with their record already on disk."""
        if self._thread is None or self._loop is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        fut: asyncio.Future[str | None] = self._loop.create_future()
        payload = ((row.id, row.request, row.route, row.policy_version, row.status, row.accepted_at,
                    row.message_deadline, row.finished_at, row.delivered_at, row.idempotency_key, row.run),
                   now - idempotency_ttl_s, now, attempts)
        rows = self._rows
        if not rows:
            self._loop.call_soon(self._hand_over)
        rows.append((_INSERT, (payload, fut)))
        return fut

    def committed(self) -> asyncio.Future[None]:
        """A future that resolves once every write queued so far (this loop turn's rows included)
        has been committed. If a row before it failed to write, the mark waits with it in the
        backlog until the store can write again (never earlier: see _run_batch). It costs no
        commit of its own: it rides with this turn's rows. The Router awaits it before a provider call, so an attempt's row
        is on disk before the call can reach the provider (a crash then always leaves a record
        of the call, which the next start marks `cancelled`)."""
        if self._thread is None or self._loop is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._row(_MARK, fut)
        return fut

    def put_policy(self, version: str, source: str, path: str, now: float) -> None:
        self.write(lambda c: c.execute(
            "INSERT OR IGNORE INTO policies (version, source, path, stored_at) VALUES (?,?,?,?)",
            (version, source, path, now)))

    def put_attempt(self, a: AttemptRow) -> None:
        """Insert or update an attempt row (an update keeps an earlier non-empty detail)."""
        self._row(_ATTEMPT, (a.attempt_id, a.message_id, a.channel, a.provider, a.try_no, a.started_at,
                             a.deadline, a.ended_at, a.outcome, a.status_code, a.detail))

    def put_attempt_values(self, values: tuple[Any, ...]) -> None:
        """put_attempt() of an AttemptRow's fields as a tuple, in field order (no row object)."""
        self._row(_ATTEMPT, values)

    def add_event(self, e: EventRow) -> None:
        self.put_event(e.message_id, e.type, e.at, e.data)

    def put_events(self, message_id: str, events: list[Any]) -> None:
        """Queue several events of one message at once: objects with .type, .at and .data (the
        engine's Event, an EventRow), neither changed after this call."""
        rows = self._rows
        if not rows or self._loop is None:
            self._row(_EVENTS, (message_id, events))
        else:
            rows.append((_EVENTS, (message_id, events)))

    def put_event(self, message_id: str, type_: str, at: float, data: dict[str, Any]) -> None:
        """Queue one event; `data` is JSON-encoded by the writer thread, so it must not change
        after this call (the engine never touches an event's data once emitted)."""
        rows = self._rows                      # = self._row(_EVENT, ...), inlined: ~7 calls per message
        if not rows or self._loop is None:
            self._row(_EVENT, (message_id, type_, at, data))
        else:
            rows.append((_EVENT, (message_id, type_, at, data)))

    def finish(self, message_id: str, status: str, finished_at: float, delivered_at: float | None) -> None:
        self._row(_FINISH, (status, finished_at, delivered_at, message_id))

    def set_provider_message_id(self, attempt_id: str, provider_message_id: str) -> None:
        """Record the vendor's id for an attempt's message (queued after the attempt's row, which
        the write-ahead commits before the call goes out; the upserts never touch this column)."""
        self._row(_VENDOR_ID, (provider_message_id, attempt_id))

    def set_run(self, message_id: str, run: int) -> None:
        self._row(_RUN, (run, message_id))

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


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state file of an older schema up to this one, in place, inside _init_schema's
    transaction: schema 3 adds attempts.provider_message_id (NULL for the attempts before it)."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
    if "provider_message_id" not in cols:
        conn.execute("ALTER TABLE attempts ADD COLUMN provider_message_id TEXT")


def _resolve_all(results: list[tuple[asyncio.Future | None, Any, BaseException | None]]) -> None:
    for fut, value, err in results:
        if fut is None or fut.done():
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)
