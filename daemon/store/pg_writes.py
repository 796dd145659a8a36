"""How the PostgreSQL store writes a batch's rows (batch._apply hands them over, per kind):
`_PgWrites`, and the check of what accept assumed of the recipients' profiles.

One statement per kind and batch, whatever the number of rows: the rows go as one array per
column and the statement reads them back with `unnest` (messages, attempts, events, final
statuses). psycopg's `executemany` sends one Bind/Execute per row, each flushed to the socket
as it goes, so the server wakes up per row: on a 2-core machine shared with the server, the
rows cost routingd's writer thread and PostgreSQL more CPU per message than everything else
the store does (docs/performance.md "Ingress on PostgreSQL, 1 and 2 workers"). The rarer
updates (a run number, a vendor's id) keep one executemany.

The arrays go in binary (pg_conn.py `execute_binary`), and every statement casts them
(`?::float8[]`): psycopg sends a list whose values are all None as an array of unknown type,
and a list of small ints as int2[].
"""

from __future__ import annotations

from typing import Any

import psycopg

from .batch import _Writes
from .interface import ProfileChanged
from .sql import _ATT_COLS, _MSG_COLS, _SQL_ATTEMPT, _update_sql
from .writer import _FINISH, _INSERT, _ROWS, _Item

# a new message is owned by the process that accepted it (its node row holds the lease)
_SQL_INSERT = f"INSERT INTO messages ({_MSG_COLS}, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_SQL_INSERTS = (f"INSERT INTO messages ({_MSG_COLS}, owner) SELECT u.*, ? FROM unnest(?::text[], ?::text[], "
                "?::text[], ?::text[], ?::text[], ?::float8[], ?::float8[], ?::float8[], ?::float8[], ?::text[], "
                "?::int[]) AS u")
_SQL_ATTEMPTS = (f"INSERT INTO attempts ({_ATT_COLS}) SELECT * FROM unnest(?::text[], ?::text[], ?::text[], "
                 "?::text[], ?::int[], ?::float8[], ?::float8[], ?::float8[], ?::text[], ?::int[], ?::text[])"
                 + _SQL_ATTEMPT[_SQL_ATTEMPT.index(" ON CONFLICT"):])
_SQL_EVENT_LOG = "INSERT INTO event_log (message_id, events) SELECT * FROM unnest(?::text[], ?::text[])"
# a final status only from the owner: a process whose lease was taken over cannot overwrite it
_SQL_FINISH_OWNED = "UPDATE messages SET status = ?, finished_at = ?, delivered_at = ? WHERE id = ? AND owner = ?"
_SQL_FINISHES_OWNED = ("UPDATE messages SET status = v.s, finished_at = v.f, delivered_at = v.d FROM "
                       "unnest(?::text[], ?::float8[], ?::float8[], ?::text[]) AS v(s, f, d, id) "
                       "WHERE messages.id = v.id AND messages.owner = ?")
# Which of a batch's (user_id, version) assumptions (daemon/profiles.py) no longer hold: a profile
# written since (another version), stored where none was, or deleted (version None vs a row's).
_SQL_PROFILES_CHANGED = ("SELECT t.u, t.v FROM unnest(?::text[], ?::bigint[]) AS t(u, v) "
                         "LEFT JOIN profiles p ON p.user_id = t.u WHERE p.version IS DISTINCT FROM t.v")
_SQL_KEY = ("INSERT INTO idempotency (key, message_id, created_at) VALUES (?,?,?) ON CONFLICT (key) DO UPDATE "
            "SET message_id = excluded.message_id, created_at = excluded.created_at "
            "WHERE idempotency.created_at < ? RETURNING message_id")


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The rows as one list per column (the arrays the statements unnest)."""
    return [list(c) for c in zip(*rows)]


class _PgWrites(_Writes):
    """batch._apply's writes for PostgreSQL: one statement per gathered kind, and a keyed insert
    that claims its key by the constraint. One per store: new rows name its node as their owner."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.changed: set[tuple[str, int | None]] = set()    # this transaction's refusals (check_profiles)

    def check_profiles(self, conn: Any, items: list[_Item]) -> None:
        """Find the inserts of this batch whose profile assumption no longer holds (one
        statement, in the batch's transaction: after every send of it arrived, so a profile
        committed before a send arrived is seen by its check)."""
        seen: set[tuple[str, int | None]] = set()
        for kind, payload, _fut in items:
            if kind == _ROWS:
                for k, row in payload:
                    if k == _INSERT and row[0][4] is not None:
                        seen.add(row[0][4])
            elif kind == _INSERT and payload[4] is not None:
                seen.add(payload[4])
        if not seen:
            self.changed = set()
            return
        users, versions = zip(*seen)
        self.changed = {(str(u), None if v is None else int(v)) for u, v in conn.execute_binary(
            _SQL_PROFILES_CHANGED, (list(users), list(versions))).fetchall()}

    def refused(self, seen: tuple[str, int | None]) -> BaseException | None:
        return ProfileChanged(seen[0]) if seen in self.changed else None

    def messages(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        conn.execute_binary(_SQL_INSERTS, (self.node, *_columns(rows)))

    def attempts(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        conn.execute_binary(_SQL_ATTEMPTS, _columns(rows))     # one row per attempt id (batch._apply merges them)

    def events(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        conn.execute_binary(_SQL_EVENT_LOG, _columns(rows))

    def updates(self, conn: Any, kind: int, rows: list[tuple[Any, ...]]) -> None:
        if kind == _FINISH:
            if len({r[3] for r in rows}) == len(rows):
                conn.execute_binary(_SQL_FINISHES_OWNED, (*_columns(rows), self.node))
            else:       # one UPDATE ... FROM would apply one of a message's rows, unpredictably
                conn.executemany(_SQL_FINISH_OWNED, [r + (self.node,) for r in rows])
        else:
            conn.executemany(_update_sql(kind), rows)

    def insert_keyed(self, conn: Any, row: tuple[Any, ...], not_before: float, now: float) -> str | None:
        # The key is claimed by the constraint (a live key elsewhere makes the upsert do nothing;
        # an expired one is taken over), never by a check and then an insert.
        got = conn.execute(_SQL_KEY, (row[9], row[0], now, not_before)).fetchone()
        if got is None:
            hit = conn.execute("SELECT message_id FROM idempotency WHERE key = ?", (row[9],)).fetchone()
            if hit is None:         # the key's row was purged between the two statements
                raise psycopg.errors.SerializationFailure("idempotency key changed under the insert; retried")
            return str(hit[0])
        conn.execute(_SQL_INSERT, (*row, self.node))
        return None
