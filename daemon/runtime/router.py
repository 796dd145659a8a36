"""The Router: the composition root of the asyncio driver. It owns the live messages (its
Fleet), starts and stops, carries out the engine's commands (_apply) and finishes messages; each
other job is a part it holds (see the package docstring, daemon/runtime/__init__.py, for the
API contract and the map of the parts).

A little over 400 lines, kept whole: what is left here is what every part shares -- the live set
and its start and stop (whose order across the store, the parts, the session and the cluster is
the contract), _apply (the one place commands become effects, which the parts call back into)
and _finish; each other job is already a part of its own (accept.py, attempts.py, resume.py,
receipts.py, housekeeping.py, ...): most public methods left are one-line delegations to them,
and cancel and status read the live set itself."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from typing import Any, Callable

from .. import cluster as _cluster
from ..adapters import AdapterContext
from ..clock import Clock
from ..core.engine import CancelAttempt, Command, Event, Finish, SetTimer, StartAttempt
from ..core.fleet import Fleet
from ..core.policy import Policy
from ..core.request import SendRequest
from ..ids import tune_gc
from ..metrics import Metrics
from ..providers import make_http_session
from ..status import attempt_json, message_json
from ..store import AttemptRow, Store
from .accept import Accept
from .attempts import Attempts
from .base import Limits, Overloaded, SubmitResult, _Live, request_bytes
from .events import _METRIC_EVENTS, EventLog
from .housekeeping import Housekeeping
from .ratelimit import RateLimits
from .receipts import Receipts
from .resume import Resume
from .snapshots import Snapshots
from .wakeups import WakeupHeap

log = logging.getLogger("routingd.runtime")

# Finished messages kept in memory (status, and late receipts the engine still sees: health,
# duplicates, late deliveries; older ones are read from the store). Every full garbage
# collection walks them with the event loop standing still: 2,048 took 50 ms on the 2-core
# machine, 1,024 4-6 ms, 512 about 2 ms (docs/performance.md "Garbage-collector pause").
_RECENT = 1024


class Router:
    def __init__(self, policy: Policy, store: Store, metrics: Metrics, clock: Clock | None = None,
                 adapter_ctx: AdapterContext | None = None, rng_seed: int | None = None,
                 limits: Limits | None = None) -> None:
        # `limits`: the merged process settings (daemon/settings.py Settings: CLI > ROUTINGD_* env >
        # [daemon]); it supplies max_inflight, idempotency_ttl and retention. Without it the
        # [daemon] table of the current policy does.
        self.limits = limits
        self._policy = policy
        self.store = store
        self.metrics = metrics
        self.clock = clock or Clock()
        # the breakers, the pending set and the cut-over worklist (daemon/core/fleet.py)
        self.fleet: Fleet[_Live] = Fleet()
        self.health = self.fleet.health
        self._ratelimits = RateLimits(self)
        self._ratelimits.configure(policy)
        self.metrics.limits = lambda: self.fleet.limiter.snapshot(self.clock.now())
        self._ctx = adapter_ctx if adapter_ctx is not None else AdapterContext(rng_seed=rng_seed)
        if self._ctx.rng_seed is None:
            self._ctx.rng_seed = rng_seed
        self._ctx.receipts = self.receipt
        # One jitter stream for every message of the process (the engine draws only back-off
        # jitter from it); a Random per message costs memory and a seeding each.
        self._rng = random.Random(rng_seed)
        self._put_events = store.put_events
        # routingd_messages_inflight is read at scrape time instead of set twice per message
        metrics.sampled(metrics.inflight, self._inflight_now)
        self._live = self.fleet.pending        # the pending messages (the Fleet's set itself)
        self._recent: OrderedDict[str, _Live] = OrderedDict()
        self._reserved = 0
        self._held_bytes = 0        # request_bytes() of the messages in _live and of submits in progress
        self._started = False
        self._stopping = False
        self._halted = False
        self._own_store = False
        self._own_session = False
        self._purge_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the parts, one job each (daemon/runtime/__init__.py)
        self._snapshots = Snapshots(policy, self._ctx, store)
        self._events = EventLog(store, metrics)
        self._listeners = self._events.listeners
        self._wakeups = WakeupHeap(self.clock, self._live, self._on_timer)
        self._accept = Accept(self)
        self._attempts = Attempts(self)
        self._resume = Resume(self)
        self._receipts = Receipts(self)
        self._housekeeping = Housekeeping(self)
        # several processes on one PostgreSQL database: leases, takeovers, handoffs (daemon/cluster.py)
        self._cluster: _cluster.Cluster | None = None

    # ------------------------------------------------------------------ properties

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def inflight(self) -> int:
        return len(self._live) + self._reserved

    @property
    def inflight_bytes(self) -> int:
        return self._held_bytes

    def _inflight_now(self) -> int:
        return len(self._live)

    def add_event_listener(self, cb: Callable[[str, Event], None]) -> None:
        self._listeners.append(cb)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._loop = self._wakeups.loop = asyncio.get_running_loop()
        tune_gc()
        if not self.store.is_open:
            await self.store.open()
            self._own_store = True
        if self._ctx.http_session is None:
            self._ctx.http_session = make_http_session()
            self._own_session = True
        self._housekeeping.follow_clock()
        now = self._housekeeping.axis_since = self.clock.now()
        stored = self._policy
        try:
            self.store.put_policy(stored.version, stored.source, stored.path, now)
            resumed = [await self._resume.resume(sm) for sm in await self.store.load_pending()]
            # The new run numbers are committed before any attempt of them goes out: a crash during
            # this start can never make the next start reuse an attempt id a provider has seen.
            await self.store.flush()
        except BaseException:       # e.g. a StoreError on a corrupt file: leave nothing open behind
            if self._own_session and self._ctx.http_session is not None:
                await self._ctx.http_session.close()
                self._ctx.http_session = None
                self._own_session = False
            if self._own_store:
                await self.store.close()
                self._own_store = False
            raise
        self.metrics.config_loaded(self._policy.version)
        self._started = True
        if self._policy is not stored:
            # swapped (a SIGHUP, a file change) while resuming: swap_policy could not store it yet,
            # and the messages accepted from now on name it as the policy to resume them under
            self.store.put_policy(self._policy.version, self._policy.source, self._policy.path, self.clock.now())
        self._cluster = _cluster.attach(self)       # first: its count of processes splits the rate limits
        for live in resumed:
            if live is not None:
                self._begin(live)
        self._purge_task = asyncio.create_task(self._housekeeping.purge_loop(), name="routingd purge")
        self._clock_task = asyncio.create_task(self._housekeeping.clock_loop(), name="routingd clock")

    async def stop(self, grace_s: float) -> None:
        if not self._started or self._halted:
            return
        self._stopping = True
        # From here no attempt starts: where a delivery would start one (a retry, a failover) it
        # holds that provider instead, and a message is never finished for lack of an attempt
        # (engine Delivery.drain). Held messages stay pending and resume on the next start.
        for live in self._live.values():
            live.delivery.drain()
        running = [t for live in self._live.values() for t in live.tasks.values()]
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        self._halted = True
        now = self.clock.now()
        leftover: list[asyncio.Future[None]] = []
        self._wakeups.halt(self._live.values())
        self._ratelimits.halt()
        for live in self._live.values():
            for t in live.tasks.values():
                t.cancel()
                leftover.append(t)
            live.tasks.clear()
            self.store.end_open_attempts(live.row.id, now, "cancelled: routingd stopped; retried on the next start")
        for task in (self._purge_task, self._clock_task):
            if task is not None:
                task.cancel()
                leftover.append(task)
        if leftover:
            await asyncio.wait(leftover, timeout=5.0)
        await self._snapshots.close_all()
        if self._own_session and self._ctx.http_session is not None:
            await self._ctx.http_session.close()
            self._ctx.http_session = None
        await self.store.flush()
        if self._cluster is not None:
            await self._cluster.stop()
        if self._own_store:
            await self.store.close()
        log.info("router stopped; %d message(s) left pending in the store", len(self._live))

    # ------------------------------------------------------------------ policies

    def swap_policy(self, policy: Policy) -> None:
        old = self._policy
        self._policy = policy
        self._accept.plans = {}
        self._snapshots.of(policy)
        self._ratelimits.configure(policy)
        if self._started and not self._halted:
            self.store.put_policy(policy.version, policy.source, policy.path, self.clock.now())
        self.metrics.config_loaded(policy.version)
        if old.version != policy.version:
            self._snapshots.retire(old.version, self._policy.version, self._loop)

    @property
    def http_session(self) -> Any:
        """The process's aiohttp session (vendor receipts fetch SNS certificates with it)."""
        return self._ctx.http_session

    def provider_config(self, provider: str) -> Any:
        """The provider's config in the current policy, else in a policy messages still use."""
        return self._snapshots.provider_config(provider, self._policy)

    def receipt_secret(self, provider: str) -> str | None:
        secret = getattr(self.provider_config(provider), "receipt_secret", None)
        return None if secret is None else secret.get_secret_value()

    # ------------------------------------------------------------------ accepting (accept.py)

    async def submit(self, request: SendRequest, idempotency_key: str | None = None,
                     request_json: str | None = None, idempotency_ttl_s: float | None = None) -> SubmitResult:
        """Accept a message. idempotency_ttl_s: how long its key is remembered (Courier's
        x-idempotency-expiration; None: [daemon] idempotency_ttl)."""
        return await self._accept.submit(request, idempotency_key, request_json, idempotency_ttl_s)

    def _begin(self, live: _Live, first: list[Command] | None = None, at: float = 0.0) -> None:
        """Route `live`: its start() commands now, or `first`, the commands start(at) gave
        before the insert, whose attempt rows that insert committed."""
        self.fleet.admit(live.row.id, live)
        self._held_bytes += request_bytes(live.row.request)
        live.snapshot.refs += 1
        if first is None:
            now = self.clock.now()
            self._apply(live, live.delivery.start(now), now)
        else:
            self._apply(live, first, at, committed=True)

    # ------------------------------------------------------------------ commands

    def _apply(self, live: _Live, commands: list[Command], now: float, committed: bool = False) -> None:
        """Carry out one engine input's commands; `now` is the time that input was given.
        committed: the rows of the attempts these commands start are already committed."""
        events: list[Event] | None = None
        for cmd in commands:
            if isinstance(cmd, Event):
                ev = cmd                        # RecordEvent is Event itself (mypy reads the alias as generic)
                if events is None:
                    events = [ev]
                else:
                    events.append(ev)
                if self._listeners or ev.type in _METRIC_EVENTS or "attempt_id" in ev.data:
                    self._events.note(live, ev)
            elif isinstance(cmd, StartAttempt):
                self._attempts.start(live, cmd, committed)
            elif isinstance(cmd, CancelAttempt):
                task = live.tasks.pop(cmd.attempt_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(cmd, SetTimer):
                self._wakeups.set_timer(live, cmd.at)
            elif isinstance(cmd, Finish):
                self._finish(live, cmd)
        if events is not None:          # the store takes one command list's events as one item
            live.events.extend(events)
            self._put_events(live.row.id, events)
        if not live.finished and live.wake_seq < 0 and not self._halted:
            wake = live.delivery.next_wakeup      # defensive: never leave a live message without a wake-up
            if wake is not None:
                self._wakeups.set_timer(live, wake)
        if self.fleet.opened:
            self._cut_over(now)
        if self.fleet.limiter.waiting:
            self._ratelimits.dispatch(now)

    def _cut_over(self, now: float) -> None:
        """A breaker opened in the batch just applied: the Fleet's cut-over (daemon/core/fleet.py)
        decides which messages fail over at `now`; this carries out their commands."""
        def execute(live: _Live, commands: list[Command]) -> None:
            if not self._halted:
                self._apply(live, commands, now)

        def failed(live: _Live, provider: str, _e: BaseException) -> None:
            log.exception("failing %s over from %s (breaker opened) failed", live.row.id, provider)

        if self._halted:
            self.fleet.opened.clear()
            return
        self.fleet.cut_over(now, execute, failed)

    def breaker_heard(self, provider: str, opened: bool) -> str | None:
        """Another routingd process on the same database says its breaker on `provider` opened
        (or closed) (daemon/shared_breakers.py hears it): the Fleet's rule applies it here
        (daemon/core/fleet.py breaker_heard); a breaker it opens fails the pending messages'
        attempts there over, as one opened here does. Returns "opened"/"closed" when a breaker
        changed here, None when not (already so, breaker off, or a provider this policy lacks)."""
        now = self.clock.now()
        breakers = {name: (None, 0.0) if p.breaker is False else (p.breaker.failures, p.breaker.cooldown / 1000.0)
                    for name, p in self._policy.model.providers.items()}
        result = self.fleet.breaker_heard(provider, opened, breakers, now)
        if result is not None:
            self.metrics.breaker_open.labels(provider=provider).set(1 if result == "opened" else 0)
        if self.fleet.opened:
            self._cut_over(now)
        return result

    def _on_timer(self, live: _Live, at: float) -> None:
        """A wake-up the message asked for at `at` is due (wakeups.py): the engine gets it at
        the Fleet's clamped time, never before `at`."""
        t = Fleet.wake_time(self.clock.now(), at)
        self._apply(live, live.delivery.on_timer(t), t)

    def _finish(self, live: _Live, cmd: Finish) -> None:
        if live.finished:
            return
        row = live.row
        row.status, row.finished_at, row.delivered_at = cmd.status, cmd.at, cmd.delivered_at
        self._release(live)
        # the finished messages kept in _recent hold no request body (the store has it;
        # status() never shows it)
        row.request = ""
        self.store.finish(row.id, cmd.status, cmd.at, cmd.delivered_at)
        self.metrics.message_finished(cmd.status)
        if cmd.delivered_at is not None:
            self.metrics.delivered_after(max(0.0, cmd.delivered_at - row.accepted_at))
        self._recent[row.id] = live
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def _release(self, live: _Live) -> None:
        """Let go of what a message holds in this process: its wake-up, its calls in flight (their
        answers are dropped), its request, its place in the fleet and its policy snapshot. Its
        Finish does it, and so does a takeover by another process (daemon/cluster.py)."""
        live.finished = True
        self._wakeups.drop(live)
        for t in live.tasks.values():
            t.cancel()
        live.tasks.clear()
        live.request = None         # freed now, while it is fresh in the cache, not at eviction
        live.rendered = None
        self._held_bytes -= request_bytes(live.row.request)
        self.fleet.finished(live.row.id)
        live.snapshot.refs -= 1
        self._snapshots.retire(live.snapshot.policy.version, self._policy.version, self._loop)

    # ------------------------------------------------------------------ receipts (receipts.py)

    async def receipt(self, provider: str, attempt_id: str, status: str) -> bool:
        """Apply a delivery receipt; True once what it changed is committed (docs/api.md)."""
        return await self._receipts.receipt(provider, attempt_id, status)

    def find_attempt(self, provider: str, vendor_id: str) -> str | None:
        """The attempt of `provider` whose message the vendor calls `vendor_id`, or None."""
        return self._receipts.find_attempt(provider, vendor_id)

    def vendor_event(self, provider: str, attempt_id: str, state: str, detail: dict[str, Any]) -> bool:
        """Record a vendor's state for an attempt as a `vendor_status` event (receipts.py)."""
        return self._receipts.vendor_event(provider, attempt_id, state, detail)

    async def settle(self) -> None:
        """Wait for the commit of everything queued so far (vendor_event's rows)."""
        await self._receipts.settle()

    # ------------------------------------------------------------------ messages

    async def cancel(self, message_id: str) -> tuple[bool, str] | None:
        """Cancel a pending message (docs/api.md "POST /v1/messages/{id}/cancel"): its attempts in
        flight are cancelled and it ends `cancelled` (Delivery.cancel). Returns (cancelled now, its
        status) once that is committed; (False, status) for a message that had already finished;
        None for an unknown id."""
        if self._halted:
            raise Overloaded(1.0, "routingd is shutting down")
        live = self._live.get(message_id)
        if live is None and self._cluster is not None and message_id not in self._recent:
            handed = await self._cluster.cancel(message_id)    # routed by another process
            if handed is not None:
                return handed
        if live is None:
            st = self.status(message_id)
            if st is not None and st["status"] == "pending":    # stored, routed at the next start
                raise Overloaded(1.0, "routingd is stopping; cancel it after the next start")
            return None if st is None else (False, str(st["status"]))
        now = self.clock.now()
        self._apply(live, live.delivery.cancel(now), now)
        try:
            await self.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged it; the client retries
            log.error("the cancel of %s could not be stored: %s", message_id, e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None
        return live.row.status == "cancelled", live.row.status

    def status(self, message_id: str) -> dict[str, Any] | None:
        live = self._live.get(message_id) or self._recent.get(message_id)
        if live is not None:
            adopted = live.delivery.attempts     # earlier runs' attempts the engine took over
            attempts = [attempt_json(a) for a in live.prior.values() if a.attempt_id not in adopted]
            for rec in live.delivery.attempts.values():
                attempts.append(attempt_json(AttemptRow(
                    rec.attempt_id, message_id, rec.channel, rec.provider, rec.try_no, rec.started_at,
                    rec.deadline, rec.ended_at, rec.outcome, rec.status_code, live.details.get(rec.attempt_id),
                    self._receipts.vendor_id_of(live, rec.attempt_id))))
            if adopted and live.prior:  # attempts of earlier runs the engine took over: in time order again
                attempts.sort(key=lambda a: (a["started_at"] or "", a["attempt_id"]))
            return message_json(live.row, attempts, live.events)
        sm = self.store.get_message(message_id)
        if sm is None:
            return None
        return message_json(sm.message, [attempt_json(a) for a in sm.attempts], sm.events)

    # ------------------------------------------------------------------ housekeeping (housekeeping.py)

    async def purge_once(self, retention_s: float, idempotency_ttl_s: float) -> int:
        """One round of the retention purge (Store.purge)."""
        return await self._housekeeping.purge_once(retention_s, idempotency_ttl_s)
