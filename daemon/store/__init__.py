"""The durable state store: the interface (interface.py), its rows (rows.py) and two
implementations, SQLite (sqlite.py, the default, on sqlite_file.py) and PostgreSQL (postgres.py),
which share the writer (writer.py: queue, writer thread, group commit, backlog), the batch
writes (batch.py) and their SQL (sql.py); `make_store()` picks one from the settings.
docs/architecture.md, docs/scaling.md."""

from __future__ import annotations

from .batch import _encode
from .interface import StateStore, StoreError
from .rows import AttemptRow, EventRow, MessageRow, StoredMessage
from .sqlite import Store
from .sqlite_file import SCHEMA_VERSION, _explain

__all__ = ["SCHEMA_VERSION", "AttemptRow", "EventRow", "MessageRow", "StateStore", "Store", "StoreError",
           "StoredMessage", "_encode", "_explain", "is_postgres_url", "make_store"]


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def make_store(state: str, store: str | None, lease_s: float = 10.0) -> Store:
    """The store the settings name: PostgreSQL when `store` is a postgresql:// URL (owning its
    pending messages by leases of `lease_s`), else the SQLite file `state`. PgStore is imported
    only then (psycopg is not loaded for SQLite)."""
    if store and is_postgres_url(store):
        from .postgres import PgStore
        return PgStore(store, lease_s=lease_s)
    return Store(state)
