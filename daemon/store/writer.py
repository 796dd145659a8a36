"""The write machinery both state stores share: a queue, one writer thread, group commit, the
backlog. `QueuedStore` is the base class; `sqlite.Store` fills in its hooks for the SQLite file
and `postgres.PgStore` (a subclass of `sqlite.Store`) for PostgreSQL: the connection, the
transaction, how a batch's rows are written (`_apply_items`: batch.py) and what an error means.

Writes go through one writer thread fed by a queue. The thread takes every operation that is
waiting, runs them in ONE transaction and commits once (group commit): many concurrent
`insert_message` calls share one fsync, and each caller's future resolves only after the commit
that holds its row (the futures of a batch with one wake-up of the event loop).

Rows (message inserts, attempts, events, finish/run updates) are plain tuples gathered on the
event loop thread and handed to the writer as ONE queue item at the end of the loop turn (or
before the next closure), so a message costs the loop a list append per write; batch.py writes
a batch's rows, a few statements per kind. A closure (`call()`, `write()`, `flush()`) or a
keyed insert is a barrier: the rows queued before it are written first. `committed()` is a
future that resolves with the commit of the rows queued before it (no commit of its own): the
Router awaits it before each provider call, so an attempt's row is always on disk before its
call goes out. Write methods are called on the event loop thread only.

A write that fails (the disk is full, refuses a write, or the file is locked) is never
dropped: a caller who waits for it (a message insert, `call()`) gets the StoreError (a send
answers 503); a write nobody waits for (attempt rows, events, a message's terminal status) is
kept in the writer's backlog, in queue order with every later such write and `committed()`
mark, and written when the store can write again (the writer retries it every _RETRY_S even
with nothing new to write). `backlog` counts them; past `max_backlog` the Router refuses new
sends (`backlog_full`) rather than grow it further; `close()` logs what it could not store and
leaves `backlog` > 0 (the daemon then exits non-zero). Only a row the database will never take (a
constraint error: a bug) is dropped, with an error line. See docs/reliability.md.

A little over 400 lines, kept whole: the queue front (the write methods, _row, _put) and the
thread that drains it (_writer, _run_batch) are one mechanism whose contract is their order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Any, Callable, Final

from .interface import StoreError
from .rows import AttemptRow, EventRow, MessageRow

log = logging.getLogger("routingd.store")

_MAX_BATCH = 5000

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


class QueuedStore:
    """The queue, the writer thread and its batches; the hooks below are a store's own."""

    def __init__(self, path: str, max_backlog: int = 50_000) -> None:
        self.path = path
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ro: Any = None                         # the connection reads run on (see _connect)
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

    # The hooks of a store (sqlite.py, postgres.py): refuse a place it cannot live in
    # (_check_dir); keep other processes off it (_lock, _unlock); a connection, the writer's or
    # (query_only) the one reads run on (_connect); create or migrate the tables (_init_schema).

    def _check_dir(self) -> None:
        raise NotImplementedError

    def _lock(self) -> None:
        raise NotImplementedError

    def _unlock(self) -> None:
        raise NotImplementedError

    def _connect(self, query_only: bool = False) -> Any:
        raise NotImplementedError

    def _init_schema(self, conn: Any) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the writer thread

    def _writer(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
            try:
                self._init_schema(conn)
            except BaseException:
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
        raise NotImplementedError

    # The transaction and error hooks of the writer loop (_writer, _run_batch), each store's
    # own: _rollback never raises; _apply_items writes items inside the open transaction
    # (batch._apply with the store's writes); _transient says whether an error may pass (the
    # disk or the database refuses writes for now: the writes nobody waits for are kept and
    # retried) or is a row never taken.

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _commit(self, conn: Any) -> None:
        raise NotImplementedError

    def _rollback(self, conn: Any) -> None:
        raise NotImplementedError

    def _apply_items(self, conn: Any, items: list[_Item], extra: list[tuple[asyncio.Future, Any]],
                     ends: list[int] | None) -> list[Any]:
        raise NotImplementedError

    def _explain_error(self, exc: BaseException, doing: str) -> StoreError:
        raise NotImplementedError

    def _transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

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
        # counted before the waiters are woken: a flush() that returns during an outage finds the
        # kept writes in `backlog` already (not a moment later, when the writer thread runs again)
        self.backlog = len(self._backlog)
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

    # a store whose insert checks what accept assumed of the recipient's profile (interface.py)
    profiles_versioned = False

    def insert_message(self, row: MessageRow, idempotency_ttl_s: float, now: float,
                       attempts: list[tuple[Any, ...]] | None = None,
                       profile_seen: tuple[str, int | None] | None = None) -> asyncio.Future[str | None]:
        """Store a new message; await the answer: None once committed, or -- with an idempotency
        key that is already known (and younger than the TTL) -- the earlier message's id, and
        nothing stored. The insert rides with the rows of this loop turn (one queue item).

        `attempts`: rows (put_attempt_values() tuples) of the message's first attempts, written in
        the insert's own transaction -- all or none: not at all for an idempotent replay, and
        retried and failed together with the insert -- so those calls can go out right after the
        commit the 202 waits for anyway, with their record already on disk.

        `profile_seen`: (user_id, version or None) accept assumed; a store with
        `profiles_versioned` refuses the message (the future raises ProfileChanged) when it no
        longer holds at the insert's transaction."""
        if self._thread is None or self._loop is None:
            raise StoreError(self.path, "the store is not open", "call `await Store.open()` first")
        fut: asyncio.Future[str | None] = self._loop.create_future()
        payload = ((row.id, row.request, row.route, row.policy_version, row.status, row.accepted_at,
                    row.message_deadline, row.finished_at, row.delivered_at, row.idempotency_key, row.run),
                   now - idempotency_ttl_s, now, attempts, profile_seen)
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


def _resolve_all(results: list[tuple[asyncio.Future | None, Any, BaseException | None]]) -> None:
    for fut, value, err in results:
        if fut is None or fut.done():
            continue
        if err is not None:
            fut.set_exception(err)
        elif isinstance(value, BaseException):   # a refusal that is an answer (ProfileChanged)
            fut.set_exception(value)
        else:
            fut.set_result(value)
