"""The SQLite state file: where it may live, its lock, its connections, its schema and its
migration, and what its errors mean (`_explain`). The store on top of it is sqlite.py.

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

A lock file (`<state>.lock`, flock) keeps a second routingd from resuming the same messages.
Every failure to open or write the file is a `StoreError` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3

from .interface import StoreError

SCHEMA_VERSION = 3         # 2: event_log (1 -> 2 needs only the new table; see _SCHEMA)
                           # 3: attempts.provider_message_id (added in place: _migrate)

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


def check_dir(path: str) -> None:
    """Refuse a state path whose directory is missing, is a file, or that is a directory."""
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        existing = d
        while existing and not os.path.lexists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if existing and os.path.lexists(existing) and not os.path.isdir(existing):
            raise StoreError(path, f"{existing} is a file, not a directory",
                             "point [daemon] state / --state at a file inside a writable directory")
        raise StoreError(path, f"directory {d} does not exist",
                         "create it or point [daemon] state / --state at a writable directory")
    if os.path.isdir(path):
        raise StoreError(path, "is a directory", "name a file inside it, e.g. routingd.db")


def lock(path: str) -> int:
    """Take the state file's lock file (flock); its descriptor, for unlock()."""
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(path, f"cannot create the lock file {lock_path}: {e.strerror}",
                         "give routingd write access to the state directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A clean stop removes the lock file (unlock): if that happened between our open
        # and our flock, we hold a lock on a removed file, which guards nothing.
        if os.fstat(fd).st_ino != os.stat(lock_path).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        os.close(fd)
        raise StoreError(path, "is in use by another routingd process (its lock file "
                         f"{lock_path} is held)", "stop the other daemon or give this one its own "
                         "--state file") from None
    return fd


def unlock(path: str, fd: int) -> None:
    try:
        # Removed while still held, so a clean stop leaves no routingd.db.lock behind
        # (docs/operations.md "Backup"); a crash leaves it, harmless: flock dies with us.
        with contextlib.suppress(OSError):
            os.unlink(path + ".lock")
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def connect(path: str, busy_timeout_s: float, query_only: bool = False) -> sqlite3.Connection:
    if not query_only and path != ":memory:":
        # Made 0600 before SQLite opens it, whatever the umask: it holds recipients and
        # contents, and SQLite gives the -wal and -shm files the mode of the database file.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError:
            pass                # sqlite3.connect reports the reason below
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_s)
    except sqlite3.Error as e:
        raise _explain(path, e, "open the database") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if query_only:
            conn.execute("PRAGMA query_only = 1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        conn.close()
        raise _explain(path, e, "read the database") from None
    return conn


def init_schema(conn: sqlite3.Connection, path: str, synchronous: str) -> None:
    """WAL mode, the synchronous setting, and the tables of SCHEMA_VERSION, in one transaction."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(path, f"cannot switch the database to WAL mode (got {mode!r})",
                         "keep the state file on a local file system (not NFS)")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = OFF")
    have = conn.execute("PRAGMA user_version").fetchone()[0]
    if have > SCHEMA_VERSION:
        raise StoreError(path, f"was written by a newer routingd (schema {have}, this one knows "
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


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state file of an older schema up to this one, in place, inside init_schema's
    transaction: schema 3 adds attempts.provider_message_id (NULL for the attempts before it)."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
    if "provider_message_id" not in cols:
        conn.execute("ALTER TABLE attempts ADD COLUMN provider_message_id TEXT")
