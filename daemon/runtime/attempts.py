"""Running an attempt (the engine's StartAttempt): the provider adapter's call, made once the
attempt's row is committed, and its answer handed back to the engine."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any, Callable

from ..adapters import AttemptRequest, ProviderAdapter, TimedAnswer
from ..core.engine import Outcome, StartAttempt
from ..providers.redact import describe_error, redact
from .base import _Live

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("routingd.runtime")

_new = object.__new__
# AttemptRequest may be built field by field only while it has exactly these fields and no
# __post_init__ or slots (daemon/adapters.py); otherwise the plain constructor is used.
_ATTEMPT_REQUEST_PLAIN = (
    tuple(f.name for f in dataclasses.fields(AttemptRequest)) ==
    ("message_id", "attempt_id", "channel", "provider", "try_no", "deadline_s", "idempotency_key", "to",
     "content", "metadata", "rendered")
    and not hasattr(AttemptRequest, "__post_init__") and not hasattr(AttemptRequest, "__slots__"))


class Attempts:
    """The Router's attempt runner (Router._apply hands it every StartAttempt)."""

    def __init__(self, router: Router) -> None:
        self._r = router

    def start(self, live: _Live, cmd: StartAttempt, committed: bool = False) -> None:
        # (Never called once stop() began: it drains every delivery, which then starts nothing.)
        r = self._r
        now = r.clock.now()
        msg = live.request
        if msg is None:             # finished: the engine starts nothing after Finish
            return
        fields: dict[str, Any] = dict(message_id=cmd.message_id, attempt_id=cmd.attempt_id, channel=cmd.channel,
                      provider=cmd.provider, try_no=cmd.try_no,
                      deadline_s=max(0.0, live.delivery.attempts[cmd.attempt_id].deadline - now),
                      idempotency_key=cmd.idempotency_key, to=msg.to, content=msg.content, metadata=msg.provider_metadata,
                      rendered=None if live.rendered is None else live.rendered.get(cmd.channel))
        if _ATTEMPT_REQUEST_PLAIN:
            # = AttemptRequest(**fields) without the frozen dataclass __init__ (an object.__setattr__
            # per field), as the engine builds its commands
            req = _new(AttemptRequest)
            req.__dict__.update(fields)
        else:
            req = AttemptRequest(**fields)
        adapter = r._snapshots.adapter(live.snapshot, cmd.provider)
        loop = r._loop
        assert loop is not None
        # Write-ahead: the call goes out only once the attempt's row (queued by EventLog.note from
        # the attempt_started event just before this command, or committed with the message's
        # insert: `committed`) is committed, so a crash can never leave a call the provider
        # may have received without a record of it.
        durable = None if committed else r.store.committed()
        if adapter.answers_at_once:
            timed = adapter.timed_answer
            fut: asyncio.Future[None] = loop.create_future()
            live.tasks[cmd.attempt_id] = fut
            if r.fleet.limiter.limited(cmd.provider):
                fut.add_done_callback(functools.partial(r._ratelimits.call_ended, cmd.provider))
            if durable is None:
                self._start_timed(live, req, timed, fut, None)
            else:
                durable.add_done_callback(functools.partial(self._start_timed, live, req, timed, fut))
            return
        task = loop.create_task(self._run_attempt(live, adapter, req, durable), name=f"attempt {cmd.attempt_id}")
        live.tasks[cmd.attempt_id] = task
        if r.fleet.limiter.limited(cmd.provider):
            task.add_done_callback(functools.partial(r._ratelimits.call_ended, cmd.provider))

    def _start_timed(self, live: _Live, req: AttemptRequest, timed: Callable[[AttemptRequest], TimedAnswer],
                     fut: asyncio.Future[None], _durable: asyncio.Future[None] | None) -> None:
        """An adapter that can draw its whole answer at once (the sandbox: `timed_answer`) is
        answered by one loop timer, set once the attempt's row is committed; the plain future
        `fut` stands for the attempt in live.tasks, so cancelling and stop()'s grace treat it
        like a task."""
        if _durable is not None and not _durable.cancelled():
            _durable.exception()        # retrieved: a store failure was logged by the store (as above)
        if fut.done():
            return                      # cancelled before its row was committed: never called
        try:
            delay, outcome, after = timed(req)
        except Exception as e:  # noqa: BLE001 - as in _run_attempt
            log.exception("provider adapter %s failed on %s", req.provider, req.attempt_id)
            delay, outcome, after = 0.0, Outcome(network=True, detail=f"adapter error: {describe_error(e)}"), None
        assert self._r._loop is not None
        if delay is not None:           # None: it never answers (cancelled at the deadline)
            self._r._loop.call_later(delay, self._timed_answer, live, req.attempt_id, outcome, after, fut)

    def _timed_answer(self, live: _Live, attempt_id: str, outcome: Outcome, after: Callable[[], None] | None,
                      fut: asyncio.Future[None]) -> None:
        if fut.done():
            return                      # cancelled meanwhile (deadline, delivered elsewhere, stop)
        fut.set_result(None)
        if after is not None:
            after()
        r = self._r
        rec = live.delivery.attempts.get(attempt_id) if outcome.provider_message_id else None
        if rec is not None and outcome.provider_message_id:
            r._receipts.vendor_id(rec.provider, attempt_id, outcome.provider_message_id)
        if live.tasks.pop(attempt_id, None) is None or r._halted:
            return
        now = r.clock.now()
        r._apply(live, live.delivery.on_outcome(attempt_id, outcome, now), now)

    async def _run_attempt(self, live: _Live, adapter: ProviderAdapter, req: AttemptRequest,
                           durable: asyncio.Future[None] | None) -> None:
        if durable is not None:
            try:
                await durable           # the attempt's row is committed (see start)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store logged and counted its failure; the call
                pass           # still goes out (a message is never held back by a broken attempt row)
        try:
            outcome = await adapter.send(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - an adapter bug is a failed attempt, not a dead daemon
            log.exception("provider adapter %s failed on %s", req.provider, req.attempt_id)
            outcome = Outcome(network=True, detail=f"adapter error: {describe_error(e)}")
        if outcome.detail:
            # the backstop under every adapter's own redaction: no URL path or query and none of
            # the provider's credentials in a detail, whatever the vendor quoted back (redact.py)
            outcome = dataclasses.replace(outcome, detail=redact(outcome.detail, adapter.masked))
        r = self._r
        if outcome.provider_message_id:
            r._receipts.vendor_id(req.provider, req.attempt_id, outcome.provider_message_id)
        if live.tasks.pop(req.attempt_id, None) is None or r._halted:
            return                  # cancelled meanwhile: the engine no longer waits for it
        now = r.clock.now()
        r._apply(live, live.delivery.on_outcome(req.attempt_id, outcome, now), now)
