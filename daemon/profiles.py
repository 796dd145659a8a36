"""Recipient profiles (Courier's Profiles API) in the state store, and their use at accept.

A profile is a JSON object kept per user_id in the `profiles` table of the state file. A message
whose `to` names a `user_id` gets the profile's fields at accept, the request's own fields
winning (`to: {"user_id": "u1"}` then reaches email and sms), and is stored with them, so a
profile changed later does not change a message already accepted (docs/api.md "Profiles").
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from .core.request import SendRequest
from .store import Store, StoreError

_TABLE = ("CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, profile TEXT NOT NULL, "
          "updated_at REAL NOT NULL)")


class Profiles:
    """The profiles of one state store. Writes go through the store's writer (ordered with
    everything else, answered after their commit); reads use its read connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ready = False
        self._exists: bool | None = None    # whether the table exists (None: not looked yet)

    async def _table(self) -> None:
        if not self._ready:
            await self.store.call(lambda conn: conn.execute(_TABLE))
            self._ready = self._exists = True

    def get(self, user_id: str) -> dict[str, Any] | None:
        if self._exists is None:
            self._exists = self.store.has_table("profiles")
        if not self._exists:        # no profile was ever stored: no query per message
            return None
        try:
            row = self.store.read_one("SELECT profile FROM profiles WHERE user_id = ?", (user_id,), "read a profile")
        except StoreError as e:
            if "no such table" in str(e):       # no profile was ever stored
                return None
            raise
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    async def put(self, user_id: str, profile: dict[str, Any], now: float, merge: bool) -> dict[str, Any]:
        """Store the profile (merge: its keys over the stored ones, Courier's POST; else replace,
        Courier's PUT); returns what is stored once it is committed."""
        await self._table()

        def op(conn: Any) -> dict[str, Any]:
            stored = profile
            if merge:
                r = conn.execute("SELECT profile FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
                old = json.loads(r[0]) if r is not None else {}
                stored = {**(old if isinstance(old, dict) else {}), **profile}
            conn.execute("INSERT INTO profiles (user_id, profile, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(user_id) DO UPDATE SET profile = excluded.profile, "
                         "updated_at = excluded.updated_at", (user_id, json.dumps(stored), now))
            return stored

        result: dict[str, Any] = await self.store.call(op)
        return result

    async def delete(self, user_id: str) -> bool:
        await self._table()

        def op(conn: Any) -> bool:
            return conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)).rowcount > 0

        deleted: bool = await self.store.call(op)
        return deleted


_BY_STORE: "weakref.WeakKeyDictionary[Store, Profiles]" = weakref.WeakKeyDictionary()


def profiles_of(store: Store) -> Profiles:
    """The one Profiles of a store (the HTTP handlers and the router share it)."""
    p = _BY_STORE.get(store)
    if p is None:
        p = _BY_STORE[store] = Profiles(store)
    return p


def with_profile(store: Store, request: SendRequest) -> tuple[SendRequest, bool]:
    """The request with its recipient's profile merged under `to` (the request's fields win), and
    whether a profile was found. A request without `to.user_id` is returned as it is."""
    to = request.message.to
    user_id = to.get("user_id")
    if not isinstance(user_id, str):
        return request, False
    profile = profiles_of(store).get(user_id)
    if profile is None:
        return request, False
    merged = {**profile, **to}
    message = request.message.model_copy(update={"to": merged})
    return request.model_copy(update={"message": message}), True
