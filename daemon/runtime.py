"""The asyncio driver of the sans-IO engine: one `Router` per daemon process.

The Router turns engine commands into real effects and feeds real events back; it makes no
routing decision of its own (those live in routingd.daemon.core.engine):

    StartAttempt   -> once the attempt's row is committed (write-ahead, so a crash never hides a
                      call: a message's first attempts commit with its insert, later ones wait
                      for Store.committed()), an asyncio task running the provider adapter's
                      send() (an adapter that draws its whole answer at once, `timed_answer` --
                      the sandbox -- is answered by one loop timer instead)
    CancelAttempt  -> task.cancel() (an http request's connection is closed)
    SetTimer(at)   -> one entry per message in the Router's wake-up heap (one loop timer for the
                      earliest entry; an entry a later SetTimer replaced is skipped when due)
    RecordEvent    -> SQLite (attempts + events), event listeners (MQTT), Prometheus metrics.
                      When a breaker opened in the batch, the Fleet's cut-over runs once it is
                      applied (routingd.daemon.core.fleet: the attempts hanging on that provider
                      fail over at once, "cancelled", "breaker opened")
    Finish         -> SQLite status; the message leaves the in-flight set

Time is `Clock.now()`: wall-anchored monotonic seconds (daemon/clock.py). The rules that span
messages -- the breakers (one HealthTracker), the pending set, the breaker cut-over, the
early-timer clamp -- are the core's `Fleet` (daemon/core/fleet.py), shared with the simulator.

API (what daemon/api/, the MQTT bridge and the CLI use):

    router = Router(policy, store, metrics, clock=None, adapter_ctx=None, rng_seed=None)
    await router.start()
        Raises the cyclic GC's young-generation threshold (tune_gc: the collector otherwise
        runs every few messages). Opens the store if it is not open yet (and then closes it in stop()), makes the one
        shared aiohttp.ClientSession unless adapter_ctx brings one, records the policy source,
        and resumes every non-terminal message in the store with its original absolute message
        deadline under the policy snapshot it was accepted under (looked up by version in the
        store's policies table; if that text no longer parses, the current policy is used and a
        `policy_unavailable` event says so). Attempts that were running when the previous process
        died are marked `cancelled`; the resumed delivery starts over (run + 1) -- at-least-once --
        except that attempts answered 2xx and awaiting their receipt are awaited again (their
        receipt deadline kept) and channels that delivered are not run again (Delivery.adopt).
        A stored request that no longer validates finishes that message `undeliverable`
        (`resume_failed` event, routingd_resume_failed_total); the others resume.
    await router.submit(send_request, idempotency_key=None, request_json=None) -> SubmitResult(message_id, created)
        request_json: the JSON text send_request was validated from as it is, if the caller has
        it; stored as the request (else send_request.model_dump_json() is).
        Raises routingd.daemon.core.plan.PlanError for an unknown route/channel/provider or a timeout
        override past a year (-> 422),
        Overloaded(retry_after_s) at [daemon] max_inflight, past [daemon] max_inflight_bytes
        (the request text held by pending messages: request_bytes()), or while stopping (-> 503).
        Returns once the message is COMMITTED to SQLite (group commit). A known Idempotency-Key
        (younger than [daemon] idempotency_ttl) returns the first message's id, created=False.
    router.status(message_id) -> dict | None
        The GET /v1/messages/{id} body: message_id, status, accepted_at, finished_at,
        delivered_at, message_deadline, route, policy_version, attempts[{attempt_id, channel,
        provider, try, started_at, ended_at, deadline, outcome, status_code, detail}],
        events[{type, at, ...data}]; times RFC 3339 UTC with milliseconds.
    await router.receipt(provider, attempt_id, status) -> bool
        status "delivered" | "failed" (else ValueError). False: no such attempt for this provider.
        Returns once what it changed is committed; raises Overloaded once stop() has halted the
        router or when it cannot be stored. A repeat of a receipt already recorded changes
        nothing (routingd_receipts_repeated_total); one for a message the retention purge
        deleted returns True and stores nothing (routingd_receipts_unmatched_total).
    await router.purge_once(retention_s, idempotency_ttl_s) -> int   one round of the retention purge
    router.receipt_secret(provider) -> str | None
    router.swap_policy(policy)    new messages use it; in-flight ones keep theirs. Also records
                                  the reload as successful in the metrics (routingd_config_hash,
                                  ..._last_reload_successful = 1, timestamp); a failed reload
                                  is the reloader's to record: metrics.config_reload_failed().
    router.policy, router.inflight (non-terminal messages in memory + submits being committed),
    router.inflight_bytes (their request text, UTF-8 bytes; a finished message keeps no request)
    router.add_event_listener(cb)  cb(message_id, routingd.daemon.core.engine.Event), called on the loop
                                  thread for every event once its row is committed (in order);
                                  exceptions are logged and ignored.
                                  Event.at (and the deadlines in Event.data) are seconds since
                                  the epoch on Clock.now(); routingd.daemon.clock.rfc3339() formats them.
    await router.stop(grace_s)     no new attempts start; in-flight attempts get up to grace_s
                                  to answer (answers are still processed, deadlines still fire);
                                  then the rest are cancelled. A retry or failover due meanwhile
                                  is held, not started (engine Delivery.drain): its message is
                                  never finished for lack of it and nothing held counts against a
                                  breaker. Non-terminal messages stay in the store for the next
                                  start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import itertools
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, Sequence

from . import providers as _providers  # noqa: F401 - registers the http and sandbox adapters
from .adapters import AdapterContext, AttemptRequest, Content, ProviderAdapter, TimedAnswer, build_adapter
from .content import render_message, unreachable
from .secrets import read_secret
from .clock import Clock
from .clock import rfc3339  # noqa: F401 - re-exported: saturates past year 9999
from .core.engine import (AttemptRecord, CancelAttempt, Command, Delivery, Event, Finish, Outcome, SetTimer,
                          StartAttempt)
from .core.fleet import Fleet
from .core.plan import Plan, PlanError, resolve_plan
from .config_files import parse_policy_text
from .core.policy import Policy, PolicyError, Problem
from .core.request import MessageRequest, SendRequest
from .errors import RoutingdError
from .ids import new_message_id, tune_gc
from .metrics import Metrics
from .openapi import MAX_TIMEOUT_MS
from .providers.redact import describe_error, redact
from .providers import UnavailableAdapter, make_http_session
from .profiles import with_profile
from .status import attempt_json, message_json
from .store import AttemptRow, EventRow, MessageRow, Store, StoredMessage, StoreError

log = logging.getLogger("routingd.runtime")

__all__ = ["Limits", "Overloaded", "Router", "SubmitResult", "PlanError", "new_message_id", "tune_gc"]

_EARLY_S = 0.0001             # a wake-up this close to due is run (see _on_wakeups)
_RECENT = 2048                 # finished messages kept in memory (status, late receipts)
_PURGE_EVERY_S = 600.0
_CLOCK_EVERY_S = 1.0           # how often the wall clock is checked for a step (also at each submit)
_VENDOR_IDS = 100_000         # vendor ids of recent attempts kept in memory (find_attempt)
_METRIC_EVENTS = frozenset({"attempt_ended", "failover", "breaker_opened", "breaker_closed"})
_new = object.__new__
# AttemptRequest may be built field by field only while it has exactly these fields and no
# __post_init__ or slots (daemon/adapters.py); otherwise the plain constructor is used.
_ATTEMPT_REQUEST_PLAIN = (
    tuple(f.name for f in dataclasses.fields(AttemptRequest)) ==
    ("message_id", "attempt_id", "channel", "provider", "try_no", "deadline_s", "idempotency_key", "to",
     "content", "metadata", "rendered")
    and not hasattr(AttemptRequest, "__post_init__") and not hasattr(AttemptRequest, "__slots__"))


class Overloaded(RoutingdError):
    """The router cannot take the message now (in-flight limit, or shutting down)."""

    def __init__(self, retry_after_s: float, reason: str = "routingd is at its in-flight limit") -> None:
        self.retry_after_s = retry_after_s
        self.reason = reason
        super().__init__(f"{reason}; retry in {retry_after_s:g}s")


class Limits(Protocol):
    """The process limits the Router reads: daemon/settings.py Settings (CLI > ROUTINGD_* env >
    [daemon]) or, without it, the policy's DaemonSection; durations in ms."""

    @property
    def max_inflight(self) -> int: ...

    @property
    def max_inflight_bytes(self) -> int: ...

    @property
    def max_body(self) -> int: ...

    @property
    def idempotency_ttl(self) -> int: ...

    @property
    def retention(self) -> int: ...


@dataclass(frozen=True)
class SubmitResult:
    message_id: str
    created: bool


@dataclass
class _Snapshot:
    policy: Policy
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    refs: int = 0


_NO_PRIOR: Mapping[str, AttemptRow] = MappingProxyType({})


class _Live:
    """One message this process is routing (or finished recently). Slots and a plain __init__:
    one is made per message and 2,048 finished ones are kept (and freed, cold) -- no attribute
    dict, no default factories, and the attempts of earlier runs as a shared empty mapping
    unless the message was resumed."""

    __slots__ = ("row", "request", "delivery", "snapshot", "prior", "events", "details", "tasks", "wake_seq",
                 "finished", "written", "rendered")

    def __init__(self, row: MessageRow, request: MessageRequest | None, delivery: Delivery, snapshot: _Snapshot,
                 prior: Mapping[str, AttemptRow] = _NO_PRIOR, events: list[EventRow | Event] | None = None,
                 rendered: dict[str, Content] | None = None) -> None:
        self.row = row
        self.request = request              # None once finished (only new attempts need it)
        self.rendered = rendered            # channel -> its template's content (None: no template)
        self.delivery = delivery
        self.snapshot = snapshot
        self.prior = prior                  # attempts of earlier runs (read only)
        self.events: list[EventRow | Event] = [] if events is None else events   # both have .type, .at, .data
        self.details: dict[str, str] = {}   # attempt_id -> detail
        self.tasks: dict[str, asyncio.Future[None]] = {}   # attempt tasks (or futures, see _start_timed)
        self.wake_seq = -1                  # the message's live entry in Router._wakeups (-1: none)
        self.finished = False
        self.written: dict[str, tuple[Any, ...]] = {}     # attempt_id -> last row state stored


def timeout_problems(msg: MessageRequest) -> list[Problem]:
    """Request timeout overrides past MAX_TIMEOUT_MS (a year): "no deadline" in disguise, and a
    10^400 ms one would not even convert to a float. Checked for every way in (HTTP, MQTT)."""
    if msg.timeout is None and not msg.channels and not msg.providers:
        return []
    found: list[tuple[tuple[str | int, ...], int | None]] = []
    if msg.timeout is not None:
        found += [(("message", "timeout", k), getattr(msg.timeout, k)) for k in ("provider", "channel", "message")]
    for kind, targets in (("channels", msg.channels), ("providers", msg.providers)):
        for name, t in targets.items():
            found += [(("message", kind, name) + k, v) for k, v in t.timeout_values()]
    return [Problem(loc, f"at most {MAX_TIMEOUT_MS} ms (366 days)")
            for loc, v in found if v is not None and v > MAX_TIMEOUT_MS]


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
        self._configure_limits(policy)
        self.metrics.limits = lambda: self.fleet.limiter.snapshot(self.clock.now())
        self._ctx = adapter_ctx if adapter_ctx is not None else AdapterContext(rng_seed=rng_seed)
        if self._ctx.rng_seed is None:
            self._ctx.rng_seed = rng_seed
        self._ctx.receipts = self.receipt
        # (provider, vendor id) <-> attempt id of recent attempts (_vendor_id, find_attempt)
        self._by_vendor: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._vendor_of: dict[str, tuple[str, str]] = {}
        # One jitter stream for every message of the process (the engine draws only back-off
        # jitter from it); a Random per message costs memory and a seeding each.
        self._rng = random.Random(rng_seed)
        self._put_events = store.put_events
        # Plans of requests without overrides, per route, for the current policy (swap_policy
        # starts a new cache): a Plan is immutable, so every such message can share it.
        self._plans: dict[str | None, Plan] = {}
        # routingd_messages_inflight is read at scrape time instead of set twice per message
        metrics.inflight.set_function(self._inflight_now)
        self._snapshots: dict[str, _Snapshot] = {policy.version: _Snapshot(policy)}
        self._live = self.fleet.pending        # the pending messages (the Fleet's set itself)
        self._recent: OrderedDict[str, _Live] = OrderedDict()
        self._listeners: list[Callable[[str, Event], None]] = []
        self._unheard: list[tuple[str, Event]] = []      # events whose rows are not committed yet
        self._reserved = 0
        self._held_bytes = 0        # request_bytes() of the messages in _live and of submits in progress
        self._started = False
        self._stopping = False
        self._halted = False
        self._own_store = False
        self._own_session = False
        self._purge_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        # The sum of the wall-clock steps followed (see _follow_clock), and the time from which the
        # idempotency keys of the current time axis were written.
        self._shifted = 0.0
        self._axis_since = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Wake-ups (SetTimer) of every message: a heap of (at, seq, message_id) served by ONE
        # loop timer for its earliest entry. An entry is live while its message's wake_seq is its
        # seq; replaced and finished ones are skipped when due, and dropped in bulk when they are
        # the majority. Cheaper than a TimerHandle made and cancelled per message.
        self._wakeups: list[tuple[float, int, str]] = []
        self._wake_seq = itertools.count()
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        # the one wake-up for the rate limiter's next turn (daemon/core/limiter.py)
        self._limit_handle: asyncio.TimerHandle | None = None
        self._limit_at: float | None = None
        self._stale = 0

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
        self._loop = asyncio.get_running_loop()
        tune_gc()
        if not self.store.is_open:
            await self.store.open()
            self._own_store = True
        if self._ctx.http_session is None:
            self._ctx.http_session = make_http_session()
            self._own_session = True
        self._follow_clock()
        now = self._axis_since = self.clock.now()
        stored = self._policy
        try:
            self.store.put_policy(stored.version, stored.source, stored.path, now)
            resumed = [await self._resume(sm) for sm in await self.store.load_pending()]
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
        for live in resumed:
            if live is not None:
                self._begin(live)
        self._purge_task = asyncio.create_task(self._purge_loop(), name="routingd purge")
        self._clock_task = asyncio.create_task(self._clock_loop(), name="routingd clock")

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
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = self._wake_at = None
        if self._limit_handle is not None:
            self._limit_handle.cancel()
            self._limit_handle = self._limit_at = None
        self._wakeups.clear()
        for live in self._live.values():
            live.wake_seq = -1
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
        for snap in self._snapshots.values():
            await self._close_adapters(snap)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5.0)
        if self._own_session and self._ctx.http_session is not None:
            await self._ctx.http_session.close()
            self._ctx.http_session = None
        await self.store.flush()
        if self._own_store:
            await self.store.close()
        log.info("router stopped; %d message(s) left pending in the store", len(self._live))

    # ------------------------------------------------------------------ policies

    def swap_policy(self, policy: Policy) -> None:
        old = self._policy
        self._policy = policy
        self._plans = {}
        self._snapshots.setdefault(policy.version, _Snapshot(policy))
        self._configure_limits(policy)
        if self._started and not self._halted:
            self.store.put_policy(policy.version, policy.source, policy.path, self.clock.now())
        self.metrics.config_loaded(policy.version)
        if old.version != policy.version:
            self._retire(old.version)

    def _configure_limits(self, policy: Policy) -> None:
        """The providers' outbound limits (rate_limit, burst, max_inflight) into the fleet's limiter;
        on a reload an unchanged limit keeps its bucket and queue (daemon/core/limiter.py)."""
        limits = {}
        for name, p in policy.providers.items():
            lim = p.outbound_limit()
            if lim is not None:
                limits[name] = lim
        self.fleet.limiter.configure(limits, self.clock.now())

    def _retire(self, version: str) -> None:
        snap = self._snapshots.get(version)
        if snap is None or snap.refs > 0 or version == self._policy.version:
            return
        del self._snapshots[version]
        if snap.adapters and self._loop is not None:
            task = self._loop.create_task(self._close_adapters(snap))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_adapters(self, snap: _Snapshot) -> None:
        adapters, snap.adapters = list(snap.adapters.values()), {}
        for a in adapters:
            try:
                await a.close()
            except Exception:  # noqa: BLE001
                log.exception("closing provider adapter %s failed", getattr(a, "name", a))

    async def _snapshot_for(self, version: str) -> tuple[_Snapshot, str | None]:
        snap = self._snapshots.get(version)
        if snap is not None:
            return snap, None
        problem: str | None = None
        src = await self.store.policy_source(version)
        if src is None:
            problem = f"policy version {version} is not in the store"
        else:
            try:
                policy = parse_policy_text(src[0], src[1], secrets=read_secret)
            except PolicyError as e:
                problem = f"policy version {version} no longer loads: {'; '.join(e.lines())}"
            else:
                snap = self._snapshots[version] = _Snapshot(policy)
                return snap, None
        return self._snapshots[self._policy.version], problem

    def _adapter(self, snap: _Snapshot, provider: str) -> ProviderAdapter:
        a = snap.adapters.get(provider)
        if a is None:
            cfg = snap.policy.providers[provider]
            try:
                a = build_adapter(provider, cfg, self._ctx)
            except LookupError:
                a = UnavailableAdapter(provider, f"no adapter for type {cfg.type!r}")
            snap.adapters[provider] = a
        return a

    @property
    def http_session(self) -> Any:
        """The process's aiohttp session (vendor receipts fetch SNS certificates with it)."""
        return self._ctx.http_session

    def provider_config(self, provider: str) -> Any:
        """The provider's config in the current policy, else in a policy messages still use."""
        cfg = self._policy.providers.get(provider)
        if cfg is None:
            for snap in self._snapshots.values():
                cfg = snap.policy.providers.get(provider)
                if cfg is not None:
                    break
        return cfg

    def receipt_secret(self, provider: str) -> str | None:
        cfg = self._policy.providers.get(provider)
        if cfg is None:
            for snap in self._snapshots.values():
                cfg = snap.policy.providers.get(provider)
                if cfg is not None:
                    break
        secret = getattr(cfg, "receipt_secret", None)
        return None if secret is None else secret.get_secret_value()

    # ------------------------------------------------------------------ accepting

    async def submit(self, request: SendRequest, idempotency_key: str | None = None,
                     request_json: str | None = None, idempotency_ttl_s: float | None = None) -> SubmitResult:
        """Accept a message. idempotency_ttl_s: how long its key is remembered (Courier's
        x-idempotency-expiration; None: [daemon] idempotency_ttl)."""
        if not self._started or self._stopping:
            raise Overloaded(1.0, "routingd is not running (starting or shutting down)")
        policy = self._policy
        # a to.user_id gets its stored profile's fields, and is stored with them (docs/api.md "Profiles")
        request, profiled = with_profile(self.store, request)
        if profiled:
            request_json = None
        msg = request.message
        too_long = timeout_problems(msg)
        if too_long:
            raise PlanError(too_long)
        plan = self._plan(policy, msg)
        why = unreachable(plan, msg.to)
        if why is not None:
            if not profiled and "user_id" in msg.to:
                why += " (no profile is stored for this user_id: PUT /profiles/{user_id})"
            raise PlanError([Problem(("message", "to"), why)])
        # A template is rendered for every channel now: a missing variable is the client's 422,
        # never a failure at send time (docs/providers.md "Content").
        rendered = render_message(policy, plan, msg)
        daemon = self.limits if self.limits is not None else policy.model.daemon
        if self.inflight >= daemon.max_inflight:
            raise Overloaded(1.0)
        text = request_json or request.model_dump_json()
        size = request_bytes(text)
        if self._held_bytes + size > daemon.max_inflight_bytes:
            # memory is bounded in bytes, not only in messages (docs/security.md)
            raise Overloaded(1.0, f"routingd holds {self._held_bytes} bytes of pending requests; this one "
                             f"({size} bytes) would pass [daemon] max_inflight_bytes ({daemon.max_inflight_bytes})")
        if self.store.backlog_full:     # accepting would add writes the disk cannot take (docs/reliability.md)
            raise Overloaded(5.0, f"routingd cannot write its state store ({self.store.backlog} writes wait "
                             "for the disk; the daemon log says why)")
        self._follow_clock()
        shifted = self._shifted
        now = self.clock.now()
        row = MessageRow(id=new_message_id(), request=text, route=plan.route,
                         policy_version=policy.version, status="pending", accepted_at=now,
                         message_deadline=now + plan.message_timeout_ms / 1000.0,
                         idempotency_key=idempotency_key)
        # The engine starts the message before the insert commits: its first attempts' rows go
        # into the insert's own transaction, so their calls go out right after the commit the
        # 202 waits for (write-ahead at no extra commit; see _start_attempt). Nothing of it takes
        # effect until then: an idempotent replay or a failed insert drops the commands (a
        # half-open breaker's probe it took is then re-armed like a probe that vanished).
        delivery = Delivery(row.id, plan, msg.to, now, self._rng, self.health, limiter=self.fleet.limiter,
                            priority=self._priority(policy, plan, msg))
        first = delivery.start(now)
        ahead: list[tuple[Any, ...]] | None = None
        for cmd in first:
            if isinstance(cmd, StartAttempt):
                values = _attempt_values(cmd.attempt_id, row.id, delivery.attempts[cmd.attempt_id], None)
                if ahead is None:
                    ahead = [values]
                else:
                    ahead.append(values)
        self._reserved += 1
        self._held_bytes += size        # taken back by _begin (then _finish) or below
        try:
            existing = await self.store.insert_message(
                row, daemon.idempotency_ttl / 1000.0 if idempotency_ttl_s is None else idempotency_ttl_s, now, ahead)
        except StoreError as e:
            # Not stored, so not accepted: the client is told to retry (503), never a 202.
            log.error("cannot accept a message: %s", e)
            self._unstart(first, now)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None
        finally:
            self._reserved -= 1
            self._held_bytes -= size
        if existing is not None:
            self._unstart(first, now)
            return SubmitResult(existing, False)
        self.metrics.message_accepted()
        if self._stopping:          # durable; the next start routes it
            if ahead is not None and self.store.is_open:   # those calls never go out: say so
                at = self.clock.now()                       # (else resume says "interrupted")
                for v in ahead:
                    self.store.put_attempt_values(v[:7] + (at, "cancelled", None, "not started: routingd is stopping"))
            return SubmitResult(row.id, True)
        snap = self._snapshots.get(policy.version)
        if snap is None:
            snap = self._snapshots[policy.version] = _Snapshot(policy)
        if self._shifted != shifted:
            # the clock was re-anchored while the insert committed (its row moved with the
            # pending ones in the store): move this message too, and its first commands' wake-up
            step = self._shifted - shifted
            delivery.rebase(step)
            row.accepted_at += step
            row.message_deadline += step
            now += step
            first = [c for c in first if not isinstance(c, SetTimer)] + [SetTimer(delivery.next_wakeup)]
        live = _Live(row, msg, delivery, snap, rendered=rendered)
        if ahead is not None:
            for v in ahead:
                live.written[v[0]] = v[7:]      # (ended_at, outcome, status_code, detail): stored
        self._begin(live, first, now)
        return SubmitResult(row.id, True)

    def _priority(self, policy: Policy, plan: Plan, msg: MessageRequest, check: bool = True) -> int:
        """The message's place in rate-limited providers' queues: its message.priority, at most
        [daemon] max_message_priority (a 422 above it), else its route's `priority`."""
        if msg.priority is not None:
            bound = policy.model.daemon.max_message_priority     # a file setting (no CLI/env one)
            if check and msg.priority > bound:
                raise PlanError([Problem(("message", "priority"), f"{msg.priority} is above [daemon] "
                                         f"max_message_priority ({bound})")])
            return min(msg.priority, bound)
        route = policy.routes.get(plan.route)
        return 0 if route is None else route.priority

    def _unstart(self, first: list[Command], now: float) -> None:
        """start()'s commands were dropped (a replay, a failed insert): give back the rate-limit
        slots its attempts took (its queued runs are dropped by the limiter itself)."""
        lim = self.fleet.limiter
        for cmd in first:
            if isinstance(cmd, StartAttempt) and lim.limited(cmd.provider):
                lim.refund(cmd.provider, now)

    def _call_ended(self, provider: str, _done: object) -> None:
        """A call on a rate-limited provider ended (answered, failed or cancelled): its place in
        flight is free, and whoever queued for it may go (daemon/core/limiter.py)."""
        self.fleet.limiter.release(provider)
        if not self._halted:
            self._dispatch(self.clock.now())

    def _dispatch(self, now: float) -> None:
        """Hand queued runs whose turn has come their slot (the Fleet's, daemon/core/fleet.py),
        and arm the one limiter wake-up for the next turn."""
        fleet = self.fleet

        def execute(live: _Live, commands: list[Command]) -> None:
            if not self._halted:
                self._apply(live, commands, now)
        fleet.dispatch(now, execute)
        nxt = fleet.limiter.next_at(now)
        if self._limit_handle is not None and (nxt is None or nxt != self._limit_at):
            self._limit_handle.cancel()
            self._limit_handle = self._limit_at = None
        if nxt is not None and self._limit_handle is None and self._loop is not None and not self._halted:
            self._limit_at = nxt
            self._limit_handle = self._loop.call_later(max(0.0, nxt - now), self._on_limiter)

    def _on_limiter(self) -> None:
        self._limit_handle = self._limit_at = None
        if not self._halted:
            self._dispatch(self.clock.now())

    def _plan(self, policy: Policy, msg: MessageRequest) -> Plan:
        """resolve_plan(policy, request=msg), cached for requests that override nothing."""
        if msg.routing is not None or msg.timeout is not None or msg.channels or msg.providers:
            return resolve_plan(policy, request=msg)
        plans = self._plans
        plan = plans.get(msg.route)
        if plan is None or policy is not self._policy:
            plan = resolve_plan(policy, request=msg)      # raises PlanError for an unknown route
            if policy is self._policy and len(plans) < 1024:
                plans[msg.route] = plan
        return plan

    async def _resume(self, sm: StoredMessage) -> _Live | None:
        """Prepare a stored message for its next run (None: it finished offline); _begin() runs it.

        Attempts of earlier runs that were running are ended `cancelled`; those answered 2xx and
        awaiting their receipt stay open and are handed to the engine (Delivery.adopt) with
        their receipt deadline, as are delivered ones: a channel already delivered is not run
        again, and a receipt for an awaited attempt counts (docs/reliability.md "Restarts")."""
        row = sm.message
        now = self.clock.now()
        snap, problem = await self._snapshot_for(row.policy_version)
        live_prior = {a.attempt_id: a for a in sm.attempts}
        self.store.end_open_attempts(row.id, now, "interrupted: routingd stopped during the attempt")
        for a in live_prior.values():
            if a.ended_at is None and not _awaiting(a):
                a.ended_at, a.outcome, a.detail = now, "cancelled", "interrupted: routingd stopped during the attempt"
        row.run += 1
        self.store.set_run(row.id, row.run)
        delivered = [a.ended_at if a.ended_at is not None else a.started_at
                     for a in live_prior.values() if a.outcome == "delivered"]
        if now >= row.message_deadline:
            # The engine's start() past the deadline would say "undeliverable" (engine.py
            # Delivery.start); a message whose deadline passed while routingd was down expired --
            # unless a channel of it delivered before (a fan-out route): then it was delivered.
            self.store.end_open_attempts(row.id, now, "message deadline passed while routingd was not running",
                                         keep_awaiting=False)
            status = "delivered" if delivered else "expired"
            self._finish_offline(row, status, now, [
                Event("message_deadline", row.message_deadline, {"while": "routingd was not running"}),
                Event("finished", now, {"status": status})], min(delivered) if delivered else None)
            return None
        try:
            req = SendRequest.model_validate_json(row.request).message
            plan = resolve_plan(snap.policy, request=req)
            rendered = render_message(snap.policy, plan, req)    # deterministic: as at accept
        except (ValueError, PlanError) as e:
            # A stored request this version no longer accepts (validation tightened by an
            # upgrade), or a plan the fallback policy cannot build: that message ends here,
            # the others resume (pydantic's ValidationError is a ValueError).
            reason = f"the stored request no longer validates: {_one_line(e)}" if isinstance(e, ValueError) \
                and not isinstance(e, PlanError) else f"no plan for the stored request: {_one_line(e)}"
            log.error("message %s cannot be resumed, finished undeliverable: %s", row.id, reason)
            self.metrics.resume_failed.inc()
            self.store.end_open_attempts(row.id, now, "cannot be resumed", keep_awaiting=False)
            self._finish_offline(row, "undeliverable", now, [
                Event("resume_failed", now, {"reason": reason}), Event("finished", now, {"status": "undeliverable"})])
            return None
        delivery = Delivery(row.id, plan, req.to, row.accepted_at, self._rng, self.health, run=row.run,
                            limiter=self.fleet.limiter, priority=self._priority(snap.policy, plan, req, check=False))
        delivery.message_deadline = row.message_deadline      # the original absolute deadline, always
        accepted_until = {e.data.get("attempt_id"): e.data.get("receipt_deadline")
                          for e in sm.events if e.type in ("attempt_accepted", "attempt_resumed")}
        known = []
        for a in live_prior.values():
            if a.outcome == "delivered" or _awaiting(a):
                rd = accepted_until.get(a.attempt_id)
                known.append(AttemptRecord(a.attempt_id, a.channel, a.provider, a.try_no, a.started_at, a.deadline,
                                           a.ended_at, a.outcome, a.status_code,
                                           float(rd) if isinstance(rd, (int, float)) else None))
        if known:
            delivery.adopt(known)
        live = _Live(row, req, delivery, snap, live_prior, list(sm.events), rendered)
        for a in live_prior.values():
            if _awaiting(a):
                live.written[a.attempt_id] = (a.ended_at, a.outcome, a.status_code, a.detail)
                if a.detail:
                    live.details[a.attempt_id] = a.detail
        if problem:
            self._record(live, Event("policy_unavailable", now,
                                     {"reason": problem, "using_version": snap.policy.version}))
        return live

    def _finish_offline(self, row: MessageRow, status: str, now: float, events: list[Event],
                        delivered_at: float | None = None) -> None:
        """Finish a stored message without routing it (resume found it past its end)."""
        for ev in events:
            self._record_offline(row.id, ev)
        self.store.finish(row.id, status, now, delivered_at)
        self.metrics.message_finished(status)

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
                    self._note(live, ev)
            elif isinstance(cmd, StartAttempt):
                self._start_attempt(live, cmd, committed)
            elif isinstance(cmd, CancelAttempt):
                task = live.tasks.pop(cmd.attempt_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(cmd, SetTimer):
                self._set_timer(live, cmd.at)
            elif isinstance(cmd, Finish):
                self._finish(live, cmd)
        if events is not None:          # the store takes one command list's events as one item
            live.events.extend(events)
            self._put_events(live.row.id, events)
        if not live.finished and live.wake_seq < 0 and not self._halted:
            wake = live.delivery.next_wakeup      # defensive: never leave a live message without a wake-up
            if wake is not None:
                self._set_timer(live, wake)
        if self.fleet.opened:
            self._cut_over(now)
        if self.fleet.limiter.waiting:
            self._dispatch(now)

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

    def _record(self, live: _Live, event: Event) -> None:
        """One event outside a command list (resume, late receipts): kept, stored, noted."""
        live.events.append(event)
        self._put_events(live.row.id, [event])
        self._note(live, event)

    def _note(self, live: _Live, event: Event) -> None:
        # The engine never changes an event once emitted, so the Event itself is kept for the
        # status endpoint and handed to the store (encoded by the writer thread); here: the
        # attempt rows, the metrics and the listeners.
        mid = live.row.id
        type_ = event.type
        data = event.data
        aid = data.get("attempt_id")
        if aid is not None:
            if type_ == "attempt_ended" and data.get("detail"):
                live.details[aid] = str(data["detail"])
            rec = live.delivery.attempts.get(aid)
            if rec is not None:
                # The row is written when it changes: at the start, at the end, and when a 2xx
                # awaits its receipt or a late receipt turns it delivered (not for the other events
                # that name the attempt).
                detail = live.details.get(aid)
                state = (rec.ended_at, rec.outcome, rec.status_code, detail)
                if live.written.get(aid) != state:
                    live.written[aid] = state
                    self.store.put_attempt_values(_attempt_values(aid, mid, rec, detail))
        if type_ in _METRIC_EVENTS:
            m = self.metrics
            if type_ == "attempt_ended":
                m.attempt_ended(data.get("channel", ""), data.get("provider", ""), data.get("outcome", ""))
            elif type_ == "failover":
                m.failover(data.get("kind", ""))
            elif type_ == "breaker_opened":
                m.breaker_open.labels(provider=data.get("provider", "")).set(1)
            elif type_ == "breaker_closed":
                m.breaker_open.labels(provider=data.get("provider", "")).set(0)
        self._notify(mid, event)

    def _record_offline(self, message_id: str, event: Event) -> None:
        """One event of a message not in memory (finished at resume, a late receipt): stored, noted."""
        self.store.add_event(EventRow(message_id, event.type, event.at, dict(event.data)))
        self._notify(message_id, event)

    def _notify(self, message_id: str, event: Event) -> None:
        """Listeners (the MQTT events) hear an event once its row is committed, never before: a
        subscriber must not see a status that a crash rolls back. This turn's events wait in
        _unheard; at the end of the turn (after the rows of the command list that emitted them
        are queued) one committed() mark is queued behind them, and its commit tells them all."""
        if not self._listeners:
            return
        unheard = self._unheard
        if not unheard:
            asyncio.get_running_loop().call_soon(self._seal_unheard)
        unheard.append((message_id, event))

    def _seal_unheard(self) -> None:
        unheard, self._unheard = self._unheard, []
        if not unheard or not self.store.is_open:
            return                      # the store is closed: not stored, so never told
        self.store.committed().add_done_callback(functools.partial(self._tell, unheard))

    def _tell(self, unheard: list[tuple[str, Event]], committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            return
        for message_id, event in unheard:
            for cb in self._listeners:
                try:
                    cb(message_id, event)
                except Exception:  # noqa: BLE001 - a listener must never break routing
                    log.exception("event listener failed on %s %s", message_id, event.type)

    def _start_attempt(self, live: _Live, cmd: StartAttempt, committed: bool = False) -> None:
        # (Never called once stop() began: it drains every delivery, which then starts nothing.)
        now = self.clock.now()
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
        adapter = self._adapter(live.snapshot, cmd.provider)
        assert self._loop is not None
        # Write-ahead: the call goes out only once the attempt's row (queued by _note from the
        # attempt_started event just before this command, or committed with the message's
        # insert: `committed`) is committed, so a crash can never leave a call the provider
        # may have received without a record of it.
        durable = None if committed else self.store.committed()
        if adapter.answers_at_once:
            timed = adapter.timed_answer
            fut: asyncio.Future[None] = self._loop.create_future()
            live.tasks[cmd.attempt_id] = fut
            if self.fleet.limiter.limited(cmd.provider):
                fut.add_done_callback(functools.partial(self._call_ended, cmd.provider))
            if durable is None:
                self._start_timed(live, req, timed, fut, None)
            else:
                durable.add_done_callback(functools.partial(self._start_timed, live, req, timed, fut))
            return
        task = self._loop.create_task(self._run_attempt(live, adapter, req, durable), name=f"attempt {cmd.attempt_id}")
        live.tasks[cmd.attempt_id] = task
        if self.fleet.limiter.limited(cmd.provider):
            task.add_done_callback(functools.partial(self._call_ended, cmd.provider))

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
        assert self._loop is not None
        if delay is not None:           # None: it never answers (cancelled at the deadline)
            self._loop.call_later(delay, self._timed_answer, live, req.attempt_id, outcome, after, fut)

    def _timed_answer(self, live: _Live, attempt_id: str, outcome: Outcome, after: Callable[[], None] | None,
                      fut: asyncio.Future[None]) -> None:
        if fut.done():
            return                      # cancelled meanwhile (deadline, delivered elsewhere, stop)
        fut.set_result(None)
        if after is not None:
            after()
        rec = live.delivery.attempts.get(attempt_id) if outcome.provider_message_id else None
        if rec is not None and outcome.provider_message_id:
            self._vendor_id(rec.provider, attempt_id, outcome.provider_message_id)
        if live.tasks.pop(attempt_id, None) is None or self._halted:
            return
        now = self.clock.now()
        self._apply(live, live.delivery.on_outcome(attempt_id, outcome, now), now)

    async def _run_attempt(self, live: _Live, adapter: ProviderAdapter, req: AttemptRequest,
                           durable: asyncio.Future[None] | None) -> None:
        if durable is not None:
            try:
                await durable           # the attempt's row is committed (see _start_attempt)
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
        if outcome.provider_message_id:
            self._vendor_id(req.provider, req.attempt_id, outcome.provider_message_id)
        if live.tasks.pop(req.attempt_id, None) is None or self._halted:
            return                  # cancelled meanwhile: the engine no longer waits for it
        now = self.clock.now()
        self._apply(live, live.delivery.on_outcome(req.attempt_id, outcome, now), now)

    def _set_timer(self, live: _Live, at: float | None) -> None:
        if live.wake_seq >= 0:
            live.wake_seq = -1
            self._stale += 1
        if at is None or live.finished or self._halted:
            return
        seq = next(self._wake_seq)
        live.wake_seq = seq
        heapq.heappush(self._wakeups, (at, seq, live.row.id))
        if self._wake_at is None or at < self._wake_at:   # (-inf while _on_wakeups runs)
            self._arm(at)
        if self._stale > 1024 and self._stale * 2 > len(self._wakeups):
            self._compact_wakeups()

    def _arm(self, at: float) -> None:
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        assert self._loop is not None
        self._wake_at = at
        self._wake_handle = self._loop.call_later(max(0.0, at - self.clock.now()), self._on_wakeups)

    def _compact_wakeups(self) -> None:
        live_of = self._live
        kept = [e for e in self._wakeups if (lv := live_of.get(e[2])) is not None and lv.wake_seq == e[1]]
        heapq.heapify(kept)
        self._wakeups = kept
        self._stale = 0

    def _on_wakeups(self) -> None:
        self._wake_handle = self._wake_at = None
        if self._halted:
            return
        heap = self._wakeups
        live_of = self._live
        # asyncio may run a handle a hair early (and the wall-anchored clock rounds): what is due
        # within _EARLY_S counts as due, and the engine sees its own deadline as reached. Wake-ups
        # asked for while these run are served by the next timer, never in this loop.
        now = self.clock.now()
        due: list[tuple[float, _Live]] = []
        while heap and heap[0][0] <= now + _EARLY_S:
            at, seq, mid = heapq.heappop(heap)
            live = live_of.get(mid)
            if live is None or live.wake_seq != seq:
                self._stale = max(0, self._stale - 1)
                continue
            live.wake_seq = -1
            due.append((at, live))
        self._wake_at = float("-inf")          # _set_timer: do not arm while the due ones run
        try:
            for at, live in due:
                if not live.finished and not self._halted and live.wake_seq < 0:
                    try:
                        t = Fleet.wake_time(self.clock.now(), at)
                        self._apply(live, live.delivery.on_timer(t), t)
                    except Exception:  # noqa: BLE001 - one message's failure must not stall the others
                        log.exception("handling the wake-up of %s failed", live.row.id)
        finally:
            self._wake_at = None
            if heap and not self._halted:
                self._arm(heap[0][0])

    def _finish(self, live: _Live, cmd: Finish) -> None:
        if live.finished:
            return
        live.finished = True
        row = live.row
        row.status, row.finished_at, row.delivered_at = cmd.status, cmd.at, cmd.delivered_at
        if live.wake_seq >= 0:
            live.wake_seq = -1
            self._stale += 1
        for t in live.tasks.values():
            t.cancel()
        live.tasks.clear()
        live.request = None         # freed now, while it is fresh in the cache, not at eviction
        live.rendered = None
        # ... and its text: the finished messages kept in _recent hold no request body (the
        # store has it; status() never shows it)
        self._held_bytes -= request_bytes(row.request)
        row.request = ""
        self.store.finish(row.id, cmd.status, cmd.at, cmd.delivered_at)
        self.metrics.message_finished(cmd.status)
        if cmd.delivered_at is not None:
            self.metrics.delivered_after(max(0.0, cmd.delivered_at - row.accepted_at))
        self.fleet.finished(row.id)
        self._recent[row.id] = live
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        live.snapshot.refs -= 1
        self._retire(live.snapshot.policy.version)

    # ------------------------------------------------------------------ breakers of the other processes

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

    # ------------------------------------------------------------------ receipts

    async def receipt(self, provider: str, attempt_id: str, status: str) -> bool:
        """Apply a delivery receipt; True once what it changed is committed (docs/api.md)."""
        if status not in ("delivered", "failed"):
            raise ValueError(f"receipt status must be 'delivered' or 'failed', got {status!r}")
        if self._halted:
            raise Overloaded(1.0, "routingd is shutting down")
        if not self._started:
            # the pending messages are not resumed yet: a receipt now would find no attempt
            # awaiting it and only be recorded as late, though answered 2xx (docs/reliability.md)
            raise Overloaded(1.0, "routingd is starting (resuming its pending messages)")
        mid = attempt_id.rsplit(".", 2)[0] if attempt_id.count(".") >= 2 else ""
        live = self._live.get(mid) or self._recent.get(mid)
        now = self.clock.now()
        if live is not None:
            rec = live.delivery.attempts.get(attempt_id)
            prior = live.prior.get(attempt_id) if rec is None else None
            known = rec if rec is not None else prior
            if known is None or known.provider != provider:
                self.metrics.receipts_unmatched.inc()
                return False
            if _repeated(known.outcome, status, attempt_id, live.events):
                self.metrics.receipts_repeated.inc()
            elif rec is not None:
                self._apply(live, live.delivery.on_receipt(attempt_id, status, now), now)
            else:
                assert prior is not None
                # An attempt of an earlier run that this run did not adopt (the restart cut it
                # mid-call, or it had ended): the engine records it, and a `delivered` one counts.
                earlier = AttemptRecord(prior.attempt_id, prior.channel, prior.provider, prior.try_no,
                                        prior.started_at, prior.deadline, prior.ended_at, prior.outcome,
                                        prior.status_code)
                if prior.detail:
                    live.details.setdefault(attempt_id, prior.detail)
                self._apply(live, live.delivery.on_earlier_receipt(earlier, status, now), now)
        else:
            row = self.store.get_attempt(attempt_id)
            if row is None:
                self.metrics.receipts_unmatched.inc()
                # a message the retention purge deleted (its id says when it was accepted): the
                # vendor is told it arrived, so that it stops resending; nothing is stored
                return self._purged(mid, now)
            if row.provider != provider:
                self.metrics.receipts_unmatched.inc()
                return False
            sm = self.store.get_message(row.message_id)
            if sm is None:
                self.metrics.receipts_unmatched.inc()
                return True
            if _repeated(row.outcome, status, attempt_id, sm.events):
                self.metrics.receipts_repeated.inc()
            else:
                event = Event("late_receipt", now, {"attempt_id": attempt_id, "status": status,
                                                    "channel": row.channel, "provider": provider})
                self.store.add_event_if_message(EventRow(row.message_id, event.type, event.at, dict(event.data)))
                self._notify(row.message_id, event)
        # Like a send's 202: the answer waits for the commit of what the receipt changed (and of
        # everything queued before it), so a vendor told "received" never has to resend it.
        try:
            await self.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged and counted it; the vendor retries
            log.error("a receipt for %s could not be stored: %s", attempt_id, e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None
        return True

    def _vendor_id(self, provider: str, attempt_id: str, vendor_id: str) -> None:
        """Remember the vendor's id for an attempt's message: stored on the attempt's row (its
        receipts find it there: find_attempt) and kept in memory for the recent ones, since a
        vendor may call back before that row update is committed."""
        if not self.store.is_open:
            return
        self.store.set_provider_message_id(attempt_id, vendor_id)
        key = (provider, vendor_id)
        self._by_vendor[key] = attempt_id
        self._vendor_of[attempt_id] = key
        while len(self._by_vendor) > _VENDOR_IDS:
            _, old = self._by_vendor.popitem(last=False)
            self._vendor_of.pop(old, None)

    @staticmethod
    def _prior_vendor_id(live: _Live, attempt_id: str) -> str | None:
        prior = live.prior.get(attempt_id)
        return None if prior is None else prior.provider_message_id

    def find_attempt(self, provider: str, vendor_id: str) -> str | None:
        """The attempt of `provider` whose message the vendor calls `vendor_id` (docs/api.md
        "Receipts"), or None."""
        aid = self._by_vendor.get((provider, vendor_id))
        if aid is not None:
            return aid
        row = self.store.attempt_by_vendor_id(provider, vendor_id)
        return None if row is None else row.attempt_id

    def vendor_event(self, provider: str, attempt_id: str, state: str, detail: dict[str, Any]) -> bool:
        """Record a vendor's state for an attempt as a `vendor_status` event on its message
        (every state a vendor reports, final or not: only final ones go on to receipt()). The
        same state with the same detail again (a vendor's retry) is not recorded twice. False
        when no such attempt of `provider` is known. The caller awaits settle() before it
        answers the vendor."""
        if self._halted:
            raise Overloaded(1.0, "routingd is shutting down")
        if not self._started:
            raise Overloaded(1.0, "routingd is starting (resuming its pending messages)")
        mid = attempt_id.rsplit(".", 2)[0] if attempt_id.count(".") >= 2 else ""
        data = {**{k: v for k, v in detail.items() if k not in ("type", "at")},
                "attempt_id": attempt_id, "provider": provider, "vendor_status": state}
        live = self._live.get(mid) or self._recent.get(mid)
        if live is not None:
            known = live.delivery.attempts.get(attempt_id) or live.prior.get(attempt_id)
            if known is None or known.provider != provider:
                return False
            if not any(e.type == "vendor_status" and e.data == data for e in live.events):
                self._record(live, Event("vendor_status", self.clock.now(), data))
            return True
        row = self.store.get_attempt(attempt_id)
        if row is None or row.provider != provider:
            return False
        sm = self.store.get_message(row.message_id)
        if sm is None:
            return False
        if not any(e.type == "vendor_status" and e.data == data for e in sm.events):
            event = Event("vendor_status", self.clock.now(), data)
            self.store.add_event_if_message(EventRow(row.message_id, event.type, event.at, dict(event.data)))
            self._notify(row.message_id, event)
        return True

    async def settle(self) -> None:
        """Wait for the commit of everything queued so far (vendor_event's rows), as receipt()
        does: a vendor is told "received" only once what it sent is stored."""
        try:
            await self.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged and counted it; the vendor retries
            log.error("a vendor receipt could not be stored: %s", e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None

    async def cancel(self, message_id: str) -> tuple[bool, str] | None:
        """Cancel a pending message (docs/api.md "POST /v1/messages/{id}/cancel"): its attempts in
        flight are cancelled and it ends `cancelled` (Delivery.cancel). Returns (cancelled now, its
        status) once that is committed; (False, status) for a message that had already finished;
        None for an unknown id."""
        if self._halted:
            raise Overloaded(1.0, "routingd is shutting down")
        live = self._live.get(message_id)
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

    def _purged(self, message_id: str, now: float) -> bool:
        """Whether a message with this id, if it existed, would have been purged by now: accepted
        (the time in its id) longer ago than the retention."""
        try:
            accepted_s = int(message_id[:11], 16) / 1000.0
        except ValueError:
            return False
        d = self.limits if self.limits is not None else self._policy.model.daemon
        return len(message_id) == 27 and accepted_s < now - d.retention / 1000.0

    # ------------------------------------------------------------------ status

    def status(self, message_id: str) -> dict[str, Any] | None:
        live = self._live.get(message_id) or self._recent.get(message_id)
        if live is not None:
            adopted = live.delivery.attempts     # earlier runs' attempts the engine took over
            attempts = [attempt_json(a) for a in live.prior.values() if a.attempt_id not in adopted]
            for rec in live.delivery.attempts.values():
                attempts.append(attempt_json(AttemptRow(
                    rec.attempt_id, message_id, rec.channel, rec.provider, rec.try_no, rec.started_at,
                    rec.deadline, rec.ended_at, rec.outcome, rec.status_code, live.details.get(rec.attempt_id),
                    self._vendor_of.get(rec.attempt_id, (None, None))[1] or self._prior_vendor_id(live, rec.attempt_id))))
            if adopted and live.prior:  # attempts of earlier runs the engine took over: in time order again
                attempts.sort(key=lambda a: (a["started_at"] or "", a["attempt_id"]))
            return message_json(live.row, attempts, live.events)
        sm = self.store.get_message(message_id)
        if sm is None:
            return None
        return message_json(sm.message, [attempt_json(a) for a in sm.attempts], sm.events)

    # ------------------------------------------------------------------ housekeeping

    def _follow_clock(self) -> None:
        """If the wall clock stepped (Clock.step), move every time this process holds by the
        step: the in-flight messages (engine Delivery.rebase), their rows and attempt rows in the
        store, the idempotency keys written on the old time axis, the breakers' cooldowns and the
        wake-ups. Times stored from now on follow the wall clock; no deadline moves relative to
        the monotonic clock, so none fires earlier or later (docs/reliability.md "Clean restarts")."""
        step_of = getattr(self.clock, "step", None)
        delta = step_of() if step_of is not None else 0.0
        if not delta:
            return
        log.warning("the wall clock stepped by %+.3fs; %d in-flight message(s) follow it", delta, len(self._live))
        self._shifted += delta
        for live in self._live.values():
            live.delivery.rebase(delta)
            row = live.row
            row.accepted_at += delta
            row.message_deadline += delta
            for a in live.prior.values():
                a.started_at += delta
                a.deadline += delta
                if a.ended_at is not None:
                    a.ended_at += delta
        self.health.rebase(delta)
        self.fleet.limiter.rebase(delta)
        if self._wakeups:
            self._wakeups = [(at + delta, seq, mid) for at, seq, mid in self._wakeups]   # still a heap
            if self._wake_handle is not None:
                self._arm(self._wakeups[0][0])
        if self.store.is_open:
            self.store.shift_times(delta, self._axis_since)
        self._axis_since = self.clock.now()

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(_CLOCK_EVERY_S)
            try:
                self._follow_clock()
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("following a step of the wall clock failed")
    async def purge_once(self, retention_s: float, idempotency_ttl_s: float) -> int:
        """One round of the retention purge (Store.purge); the purged messages are also dropped
        from memory before their rows are deleted, so a late receipt for one finds nothing to
        re-insert rows for (it is counted as unmatched: receipt())."""
        return await self.store.purge(self.clock.now(), retention_s, idempotency_ttl_s, self._policy.version,
                                      forget=self._forget)

    def _forget(self, message_ids: list[str]) -> None:
        recent = self._recent
        for mid in message_ids:
            recent.pop(mid, None)

    async def _purge_loop(self) -> None:
        while True:
            try:
                d = self.limits if self.limits is not None else self._policy.model.daemon
                while True:
                    n = await self.purge_once(d.retention / 1000.0, d.idempotency_ttl / 1000.0)
                    if n:
                        log.info("purged %d finished message(s) older than the retention", n)
                    if n < 5000:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.error("purging old messages failed: %s", e)
            await asyncio.sleep(_PURGE_EVERY_S)


def _awaiting(a: AttemptRow) -> bool:
    """An attempt answered 2xx that awaits its receipt: not ended, with a 2xx status code."""
    return a.ended_at is None and a.status_code is not None and 200 <= a.status_code < 300


def _repeated(outcome: str | None, status: str, attempt_id: str, events: Sequence[EventRow | Event]) -> bool:
    """Whether a receipt repeats one already recorded: a `delivered` one for an attempt that is
    delivered, or one whose late_receipt event (same attempt, same status) is already stored.
    Such a replay changes nothing and is not recorded again (a vendor's retries, or a replay,
    must not grow a message's events without bound; docs/security.md)."""
    if outcome == "delivered" and status == "delivered":
        return True
    for e in events:
        if e.type == "late_receipt" and e.data.get("attempt_id") == attempt_id and e.data.get("status") == status:
            return True
    return False


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


def request_bytes(text: str) -> int:
    """A request text's size in UTF-8 bytes, what [daemon] max_inflight_bytes counts (an ASCII
    text -- nearly all -- without encoding it)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _attempt_values(attempt_id: str, message_id: str, rec: AttemptRecord, detail: str | None) -> tuple[Any, ...]:
    """An attempt's row as Store.put_attempt_values() takes it (AttemptRow's field order) from
    the engine's record of it: the last four fields are (ended_at, outcome, status_code, detail),
    the state Router._note compares with `_Live.written`."""
    return (attempt_id, message_id, rec.channel, rec.provider, rec.try_no, rec.started_at,
            rec.deadline, rec.ended_at, rec.outcome, rec.status_code, detail)
