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
        On PostgreSQL only the messages no live process owns are resumed, and a loop takes over
        those of processes that die and hands receipts and cancels to the owning process
        (daemon/cluster.py, docs/scaling.md "Leases").
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

The package's modules, one job each (`Router` holds one of each part and keeps the API below):

    router.py        Router: start/stop, policy swaps, _apply (the commands above), _finish,
                     cancel, status; the parts below are composed into it
    base.py          _Live (one message's state), _Snapshot, SubmitResult, Overloaded, Limits,
                     request_bytes, timeout_problems
    accept.py        Accept: submit() -- checks, plan, limits, the insert with the first attempts
    attempts.py      Attempts: StartAttempt -> the adapter's call (a task, or one timer for a
                     `timed_answer` adapter), its Outcome back to the engine
    wakeups.py       WakeupHeap: SetTimer -> one heap, one loop timer
    events.py        EventLog: event -> attempt row, metrics, listeners (told once committed)
    ratelimit.py     RateLimits: the limiter's configuration, slots given back, queued turns
    snapshots.py     Snapshots: the policy versions in use and their provider adapters
    resume.py        Resume: the store's pending messages at start, or finished offline
    receipts.py      Receipts: receipt(), vendor_event(), find_attempt(), the vendor ids
    housekeeping.py  Housekeeping: following a wall-clock step, the retention purge

What daemon/runtime.py exported before it became this package is importable from
`routingd.daemon.runtime` as before (re-exported below).
"""

from __future__ import annotations

from ..clock import rfc3339 as rfc3339  # re-exported: saturates past year 9999
from ..core.plan import PlanError as PlanError
from ..ids import new_message_id as new_message_id, tune_gc as tune_gc
from .attempts import _ATTEMPT_REQUEST_PLAIN as _ATTEMPT_REQUEST_PLAIN
from .base import (
    Limits as Limits,
    Overloaded as Overloaded,
    SubmitResult as SubmitResult,
    _Live as _Live,
    _Snapshot as _Snapshot,
    _attempt_values as _attempt_values,
    request_bytes as request_bytes,
    timeout_problems as timeout_problems,
)
from .receipts import _repeated as _repeated
from .resume import _awaiting as _awaiting
from .router import Router as Router

__all__ = ["Limits", "Overloaded", "Router", "SubmitResult", "PlanError", "new_message_id", "tune_gc"]
