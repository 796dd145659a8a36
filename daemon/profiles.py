"""Recipient profiles (Courier's Profiles API) in the state store, and their use at accept.

A profile is a JSON object kept per user_id in the `profiles` table of the state file. A message
whose `to` names a `user_id` gets the profile's fields at accept, the request's own fields
winning (`to: {"user_id": "u1"}` then reaches email and sms), and is stored with them, so a
profile changed later does not change a message already accepted (docs/api.md "Profiles").

Reading it per send (docs/scaling.md "Profiles at accept"):

  * SQLite (one process per file): a read on the event loop, none while no profile was ever
    stored (the table does not exist yet).
  * PostgreSQL (`store.profiles_versioned`; several processes on one database): no query per
    send. A process answers from what it knows -- no profile stored at all (looked up once),
    or a profile it read before (a bounded cache) -- and tags the message with what it assumed,
    `(user_id, version)` (None: no profile). The insert's transaction checks every tag against
    the profiles table (postgres.py, one statement per batch) and refuses a message whose
    assumption no longer holds (`ProfileChanged`); `Accept.submit` then forgets what it knew,
    reads the profile afresh off the event loop and accepts the message again. A profile
    written through any process, committed before a send arrives anywhere, is therefore
    always seen by that send; a profile unknown here is read off the event loop (a thread).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from .core.request import SendRequest
from .store import Store, StoreError

_TABLE = ("CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, profile TEXT NOT NULL, "
          "updated_at REAL NOT NULL)")
# PostgreSQL (schema 3, pg_schema.py): every write of a profile gives it a new `version`
_READ_VERSIONED = "SELECT profile, version FROM profiles WHERE user_id = ?"
_ANY = "SELECT EXISTS (SELECT 1 FROM profiles)"
# Profiles this process remembers (PostgreSQL); past it the oldest half is forgotten.
CACHE_MAX = 10_000

# What a send assumed of its recipient's profile, checked by the insert's transaction:
# (user_id, the profile's version, or None for "no profile"); None: nothing to check (a fresh read)
Seen = tuple[str, "int | None"] | None


class Profiles:
    """The profiles of one state store. Writes go through the store's writer (ordered with
    everything else, answered after their commit); reads use its read connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ready = False
        self._exists: bool | None = None    # whether the table exists (None: not looked yet)
        # PostgreSQL: what this process knows (module docstring); checked at each insert
        self.versioned = store.profiles_versioned
        self._none_stored: bool | None = None    # no profile in the database (None: not looked yet)
        self._known: dict[str, tuple[dict[str, Any] | None, int | None]] = {}

    async def _table(self) -> None:
        if not self._ready:
            await self.store.call(lambda conn: conn.execute(_TABLE))
            self._ready = self._exists = True

    def get(self, user_id: str) -> dict[str, Any] | None:
        """The stored profile, read now (GET /profiles; SQLite's accept)."""
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
        return None if row is None else _decode(row[0])

    # ------------------------------------------------------------------ at accept

    def known(self, user_id: str) -> tuple[dict[str, Any] | None, Seen] | None:
        """(the profile or None, what the insert must check) for a send, without waiting; None
        when it must be read first (`await read(user_id)`). SQLite: read now, nothing to check."""
        if not self.versioned:
            return self.get(user_id), None
        hit = self._known.get(user_id)
        if hit is not None:
            return hit[0], (user_id, hit[1])
        if self._none_stored:
            return None, (user_id, None)
        return None

    async def read(self, user_id: str) -> tuple[dict[str, Any] | None, Seen]:
        """The profile read now, off the event loop (PostgreSQL); a read after the send arrived
        needs no check. Remembered for the next sends to this user_id."""
        store = self.store
        if self._none_stored is None:
            row = await asyncio.to_thread(store.read_one, _ANY, (), "read the profiles")
            self._none_stored = row is not None and not row[0]
            if self._none_stored:
                return None, None
        row = await asyncio.to_thread(store.read_one, _READ_VERSIONED, (user_id,), "read a profile")
        profile = None if row is None else _decode(row[0])
        known = self._known
        if len(known) >= CACHE_MAX:
            for uid in list(known)[:CACHE_MAX // 2]:      # the oldest half (insertion order)
                del known[uid]
        known[user_id] = (profile, None if row is None else int(row[1]))
        return profile, None

    def changed(self, user_id: str) -> None:
        """An insert was refused: what this process knew of user_id is out of date (a profile
        was written through another process). The next send reads it afresh."""
        self._known.pop(user_id, None)
        self._none_stored = False

    # ------------------------------------------------------------------ writes

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
        self._known.pop(user_id, None)
        self._none_stored = False
        return result

    async def delete(self, user_id: str) -> bool:
        await self._table()

        def op(conn: Any) -> bool:
            return conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)).rowcount > 0

        deleted: bool = await self.store.call(op)
        self._known.pop(user_id, None)
        self._none_stored = None            # perhaps none is left: looked up again at the next read
        return deleted


def _decode(text: str) -> dict[str, Any] | None:
    value = json.loads(text)
    return value if isinstance(value, dict) else None


_BY_STORE: "weakref.WeakKeyDictionary[Store, Profiles]" = weakref.WeakKeyDictionary()


def profiles_of(store: Store) -> Profiles:
    """The one Profiles of a store (the HTTP handlers and the router share it)."""
    p = _BY_STORE.get(store)
    if p is None:
        p = _BY_STORE[store] = Profiles(store)
    return p


def merge_profile(request: SendRequest, profile: dict[str, Any] | None) -> tuple[SendRequest, bool]:
    """The request with the profile merged under `to` (the request's fields win), and whether
    there was one."""
    if profile is None:
        return request, False
    merged = {**profile, **request.message.to}
    message = request.message.model_copy(update={"to": merged})
    return request.model_copy(update={"message": message}), True

