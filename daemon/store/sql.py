"""The SQL text both stores share (sqlite.py, postgres.py): the column lists and a row's
positions, the row statements the writer runs (batch.py) and the message list's query. Written
with `?` placeholders; the PostgreSQL store's connection turns them into psycopg's."""

from __future__ import annotations

from typing import Any, Final

from .writer import _FINISH, _VENDOR_ID

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

_SQL_INSERT = f"INSERT INTO messages ({_MSG_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_SQL_ATTEMPT = (f"INSERT INTO attempts ({_ATT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(attempt_id) DO UPDATE SET ended_at=excluded.ended_at, outcome=excluded.outcome, "
                "status_code=excluded.status_code, detail=COALESCE(excluded.detail, attempts.detail)")
_SQL_FINISH = "UPDATE messages SET status = ?, finished_at = ?, delivered_at = ? WHERE id = ?"
_SQL_RUN = "UPDATE messages SET run = ? WHERE id = ?"
_SQL_VENDOR_ID = "UPDATE attempts SET provider_message_id = ? WHERE attempt_id = ?"


def _update_sql(kind: int) -> str:
    return _SQL_FINISH if kind == _FINISH else _SQL_VENDOR_ID if kind == _VENDOR_ID else _SQL_RUN


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
