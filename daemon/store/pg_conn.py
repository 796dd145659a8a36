"""The PostgreSQL store's connection (daemon/store/postgres.py): `_Conn`, a psycopg connection
taking the SQLite store's `?` placeholders and connected again when it was lost (with a short
back-off after a failed attempt), `redact` (a URL without its password, for messages and logs)
and `_explain` (what a psycopg error means, as a StoreError naming what to check).
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import psycopg

from .interface import StoreError

# After a failed connection attempt the next one waits this long; meanwhile using the connection
# fails at once with the same error. A server that drops packets costs `connect_timeout` per
# attempt, and the writer retries a failed batch one item at a time: without it a batch of N
# sends would take N timeouts to be refused. Shorter than the writer's backlog retry (0.5 s).
_RECONNECT_S = 0.25


def _q(sql: str) -> str:
    """`?` placeholders (the SQLite store's, and profiles.py's) as psycopg's `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "postgresql://…"
    # libpq also takes the password as a query parameter (?password=...)
    query = "&".join("password=***" if part.lower().startswith("password=") else part
                     for part in u.query.split("&")) if u.query else u.query
    if u.password is None:
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, query, u.fragment))
    # the netloc as written, user and host:port kept (u.port refuses a port out of range)
    netloc = f"{u.netloc.rpartition('@')[0].partition(':')[0]}:***@{u.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, query, u.fragment))


class _Conn:
    """A psycopg connection in autocommit mode (transactions are the writer's explicit BEGIN and
    COMMIT, as with SQLite), taking `?` placeholders; connected again when it was lost."""

    def __init__(self, url: str, connect_timeout_s: int, custom_plans: bool = False) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.custom_plans = custom_plans
        self.raw: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._failed: psycopg.OperationalError | None = None

    def ensure(self) -> psycopg.Connection[Any]:
        raw = self.raw
        if raw is None or raw.closed or raw.broken:
            if raw is not None:
                raw.close()
                self.raw = None
            if self._failed is not None and time.monotonic() < self._retry_at:
                raise psycopg.OperationalError(str(self._failed))
            try:
                self.raw = raw = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout_s,
                                                 application_name="routingd")
                if self.custom_plans:
                    # A prepared statement's generic plan is kept until the table's statistics
                    # change; made while a table was small (a new database, before autovacuum's
                    # first ANALYZE) it scans the table as it grows: pg_writes.py's UPDATE ...
                    # FROM unnest() cost PostgreSQL 10x its CPU per message so. A plan for
                    # every execution, with the arrays' actual sizes, costs far less.
                    raw.execute("SET plan_cache_mode = force_custom_plan")
            except psycopg.OperationalError as e:
                self._failed, self._retry_at = e, time.monotonic() + _RECONNECT_S
                raise
            self._failed = None
        return raw

    def execute(self, sql: str, args: Any = None) -> psycopg.Cursor[Any]:
        raw = self.ensure()
        return raw.execute(_q(sql) if args is not None else sql, args)

    def execute_binary(self, sql: str, args: Any) -> psycopg.Cursor[Any]:
        """execute() with every parameter sent in binary: an array of N values is packed, where
        the text format escapes each value with a regular expression (4-5x the CPU for the
        rows of pg_writes.py, whose JSON is full of quotes)."""
        return self.ensure().execute(sql.replace("%", "%%").replace("?", "%b"), args)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self.ensure().cursor() as cur:
            cur.executemany(_q(sql), rows)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def _explain(path: str, exc: BaseException, doing: str) -> StoreError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if isinstance(exc, psycopg.OperationalError):
        if "password" in low or "authentication" in low or "role" in low:
            return StoreError(path, f"cannot {doing}: the database refused the login ({text})",
                              "check the user and password in [daemon] store and the server's pg_hba.conf")
        if "does not exist" in low:
            return StoreError(path, f"cannot {doing}: {text}", "create the database (createdb) or fix its name "
                              "in [daemon] store")
        return StoreError(path, f"cannot {doing}: the database is unreachable ({text})",
                          "check that PostgreSQL runs and that [daemon] store names its host and port")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return StoreError(path, f"cannot {doing}: {text}", "grant the routingd user the right to create tables "
                          "in its schema (the store migrates its tables at start)")
    return StoreError(path, f"cannot {doing}: {text}")
