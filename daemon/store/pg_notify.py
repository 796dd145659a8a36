"""Breaker notices between routingd processes sharing one PostgreSQL database: LISTEN/NOTIFY.

Transport only (what a notice means is the core's rule: daemon/core/fleet.py breaker_heard;
daemon/shared_breakers.py joins the two). A `NoticeBus` holds two connections of its own,
outside the store's writer (a notice must not wait behind a batch, nor be kept in its backlog):

  * the listening one: `LISTEN routingd_breakers`, then it waits for notifications on the event
    loop (psycopg's AsyncConnection.notifies); each is decoded and handed to `on_notice` on the
    loop thread. TCP keepalives and a `SELECT 1` after each quiet `idle_s` find a dead link.
  * the publishing one: `publish()` queues a notice and returns; a task sends it with
    `SELECT pg_notify(channel, payload)` (the listening connection is busy waiting: psycopg
    holds its lock for the whole wait).

Both connect again every `retry_s` after a loss (a database restart, an outage). Notices are not
stored: one published while the database is unreachable is dropped (a breaker's news is worth
seconds; every process still has its own breakers), as are those sent while a listener was
disconnected. A process hears its own notices too: `origin` (random per bus) tells them apart.

Payload (JSON, well under PostgreSQL's 8000-byte limit): {"v": 1, "from": origin, "provider":
name, "state": "opened" | "closed", "policy": version}. A notification that does not decode is
handed to `on_malformed` and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import psycopg

from .pg_conn import redact

log = logging.getLogger("routingd.store")

CHANNEL = "routingd_breakers"
_MAX_QUEUED = 1000          # notices waiting to be published; past it new ones are dropped
_MAX_NAME = 200             # a provider name or policy version longer than this is not ours


@dataclass(frozen=True)
class Notice:
    origin: str             # the publishing bus's id
    provider: str
    opened: bool            # True: its breaker opened; False: it closed
    policy: str             # the publisher's policy version (a provider may exist in one only)


def encode(n: Notice) -> str:
    return json.dumps({"v": 1, "from": n.origin, "provider": n.provider, "state": "opened" if n.opened else "closed",
                       "policy": n.policy}, separators=(",", ":"))


def decode(payload: str) -> Notice | None:
    """The notice a payload holds, or None when it is not one (another version, garbage)."""
    try:
        d = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("v") != 1 or d.get("state") not in ("opened", "closed"):
        return None
    origin, provider, policy = d.get("from"), d.get("provider"), d.get("policy")
    if not (_name(origin) and _name(provider) and _name(policy)):
        return None
    return Notice(str(origin), str(provider), d["state"] == "opened", str(policy))


def _name(x: object) -> bool:
    return isinstance(x, str) and 0 < len(x) <= _MAX_NAME


class NoticeBus:
    """`await start()`, `publish(...)`, `await close()`; `on_notice` hears the other processes'."""

    def __init__(self, url: str, on_notice: Callable[[Notice], None],
                 on_malformed: Callable[[str], None] | None = None, connect_timeout_s: int = 5,
                 retry_s: float = 0.5, idle_s: float = 10.0) -> None:
        self.url = url
        self.on_notice = on_notice
        self.on_malformed = on_malformed
        self.origin = uuid.uuid4().hex
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self.idle_s = idle_s
        self.listening = asyncio.Event()        # set while LISTEN is in place (tests wait on it)
        self.published = 0
        self.dropped = 0                        # notices not published (database unreachable, queue full)
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(_MAX_QUEUED)
        self._tasks: list[asyncio.Task[None]] = []
        self._down_logged = False

    async def start(self) -> None:
        """Start listening and publishing; returns at once (an unreachable database is retried)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._publish())]

    def publish(self, provider: str, opened: bool, policy: str) -> None:
        """Tell the other processes; never blocks (dropped, and counted, when the queue is full)."""
        try:
            self._queue.put_nowait(Notice(self.origin, provider, opened, policy))
        except asyncio.QueueFull:
            self.dropped += 1

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.listening.clear()

    # ------------------------------------------------------------------ connections

    async def _connect(self, name: str) -> psycopg.AsyncConnection[Any]:
        # keepalives: a peer gone without a word (a partition) is found within about 10 s
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=self.connect_timeout_s, application_name=name,
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)

    def _lost(self, what: str, e: BaseException) -> None:
        if not self._down_logged:
            log.warning("breaker notices (%s): %s: %s; connecting again every %gs", redact(self.url), what,
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, self.retry_s)
            self._down_logged = True

    async def _listen(self) -> None:
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect("routingd-listen")
                await conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                if self._down_logged:
                    log.info("breaker notices (%s): listening again", redact(self.url))
                    self._down_logged = False
                while True:
                    quiet = True
                    async for n in conn.notifies(timeout=self.idle_s):
                        quiet = False
                        self._heard(n.payload)
                    if quiet:
                        await conn.execute("SELECT 1")      # is the link still there?
            except asyncio.CancelledError:
                raise
            except psycopg.Error as e:
                self._lost("the listening connection failed", e)
            except Exception:  # noqa: BLE001 - the listener must outlive any surprise
                log.exception("breaker notices: listening failed")
            finally:
                self.listening.clear()
                if conn is not None:
                    await _close(conn)
            await asyncio.sleep(self.retry_s)

    def _heard(self, payload: str) -> None:
        notice = decode(payload)
        if notice is None:
            if self.on_malformed is not None:
                self.on_malformed(payload)
            return
        if notice.origin == self.origin:
            return                                  # our own
        try:
            self.on_notice(notice)
        except Exception:  # noqa: BLE001 - one notice must not stop the listener
            log.exception("breaker notice %r could not be applied", payload[:200])

    async def _publish(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        loop = asyncio.get_running_loop()
        retry_at = 0.0          # after a failure, notices are dropped untried until then
        try:
            while True:
                notice = await self._queue.get()
                if loop.time() < retry_at:
                    self.dropped += 1
                    continue
                try:
                    if conn is None or conn.closed or conn.broken:
                        if conn is not None:
                            await _close(conn)
                        conn = None
                        conn = await self._connect("routingd-notify")
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, encode(notice)))
                    self.published += 1
                except psycopg.Error as e:
                    # dropped: by the time the database answers again, the news is stale
                    self.dropped += 1
                    retry_at = loop.time() + self.retry_s
                    self._lost("a notice could not be published", e)
                    if conn is not None and (conn.closed or conn.broken):
                        await _close(conn)
                        conn = None
        finally:
            if conn is not None:
                await _close(conn)


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        pass
