"""The sans-IO routing engine: one `Delivery` state machine per message.

Inputs, each with `now` (seconds on the driver's clock; the daemon passes wall-anchored monotonic
time, the simulator SimPy's `env.now`):

    start(now)                              begin routing
    on_outcome(attempt_id, Outcome, now)    a provider answered (or the connection failed)
    on_receipt(attempt_id, status, now)     a delivery receipt arrived
    on_earlier_receipt(record, status, now) one for an attempt of an earlier run (before a restart)
    on_timer(now)                           the wake-up asked for by the last SetTimer came due
                                            (answered with a SetTimer even when unchanged, so a
                                            timer that fired early re-arms instead of stalling)
    on_provider_unhealthy(provider, now)    optional: that provider's breaker has just opened;
                                            fail over at once from the attempts in flight on it
    drain()                                 optional: the driver is stopping; start no attempt
                                            from now on (see Delivery.drain)
    rebase(delta)                           optional: the driver's clock was re-anchored by
                                            `delta` seconds; every time held moves with it

Before start(), a delivery resumed after a restart may be told the attempts of its earlier runs
with adopt(records) (docs/reliability.md "Restarts"): a channel one of them delivered is not run
again, and an attempt still awaiting its receipt is waited for (under its receipt deadline)
instead of being sent again.

Outputs are commands (immutable named tuples, daemon/core/commands.py): StartAttempt, CancelAttempt,
SetTimer, RecordEvent, Finish. The engine never sleeps, never reads a clock and never does I/O; its only randomness is
the back-off jitter, drawn from the `rng` passed in. Same inputs, same commands.

Where things are: commands.py holds the records in and out (re-exported here: drivers import them
from this module) and the event type names; tree.py the plan tree this machine walks, the
provider-run states with their transition table and the deadline ranks; health.py the breakers;
fleet.py the rules that span messages (the breakers shared, the pending set, the breaker
cut-over, the early-timer clamp), which both drivers use. The machine itself is this module's
`Delivery` -- its state, these inputs, and the plumbing every step shares (events, attempt
records, the deadline heap's push, the hand-out of commands and the wake-up) -- and the
module-level functions that take it: walk.py starts and completes the nodes of the tree,
outcomes.py moves a started run on (answers, receipts, retries, the breaker cut-over),
deadlines.py fires what comes due and moves every time held, resume.py reads the attempts of
earlier runs (docs/architecture.md, the module table under "The engine contract (sans-IO)").
Functions taking the Delivery rather than mixin classes: compiled, each call between them is a
direct C call and the Delivery stays one slotted native class (docs/performance.md "The engine
in five modules").

Semantics (docs/configuration.md "Timeout precedence", "[failover]"; docs/architecture.md):
  * channel deadline = min(channel start + channel timeout, message deadline);
    attempt deadline = min(attempt start + provider timeout, channel deadline);
    receipt deadline = min(2xx + receipt_timeout, channel deadline). At a deadline the running
    attempt is cancelled and counts as a timeout.
  * breaker `slow` (optional): an attempt still running `slow` after its start counts one breaker
    failure then (event attempt_slow) and runs on; its end counts nothing more unless it is a
    success. If that opens (or, for a half-open probe, re-opens) the breaker, the attempt fails
    over at once, as on_provider_unhealthy does for the other messages' attempts.
  * retryable outcomes (failover.on; receipt timeout / failed receipt always) retry the same
    provider while it has retries left and the back-off fits before the channel deadline, else
    fail over to the next provider; other outcomes fail the channel.
  * single: items in order until one delivers; all: every item runs, delivered if any is.
  * a receipt that arrives after failover moved on still counts; deliveries beyond the first in
    a `single` scope are recorded as duplicates.
"""

from __future__ import annotations

import random
from heapq import heappush
from typing import TYPE_CHECKING, Any, Literal, Mapping

from .commands import (ATTEMPT_ACCEPTED, ATTEMPT_ENDED, ATTEMPT_HELD, ATTEMPT_QUEUED,  # noqa: F401 - re-exported
                       ATTEMPT_RESUMED, PROVIDER_SPILLED,
                       ATTEMPT_SLOW, ATTEMPT_STARTED, BREAKER_CLOSED, BREAKER_OPENED, CHANNEL_DEADLINE,
                       CHANNEL_FINISHED, CHANNEL_SKIPPED, CHANNEL_STARTED, DELIVERED, DUPLICATE, EVENT_TYPES,
                       FAILOVER, FINISHED, LATE_RECEIPT, MESSAGE_DEADLINE, PROVIDER_SKIPPED, RECEIPT_TIMEOUT,
                       RECEIPT_UNKNOWN, RETRY_ABANDONED, RETRY_SCHEDULED, STARTED, AttemptOutcomeName,
                       AttemptRecord, CancelAttempt, Command, Event, Finish, Outcome, RecordEvent, SetTimer,
                       StartAttempt, _record, _tnew)
from .deadlines import advance
from .deadlines import rebase as _rebase
from .health import HealthTracker
from .limiter import Limiter
from .outcomes import earlier_receipt, handle_outcome, late_receipt, provider_unhealthy, retry_or_fail, run_delivered
from .plan import Plan
from .resume import adopt as _adopt
from .tree import ATTEMPTING, AWAITING, DONE, QUEUED, _build, _Channel, _Group, _Node, _Resume, _Run
from .walk import begin, cancel_under, complete, finish, hold, spill, start_node, unqueue

# --------------------------------------------------------------------------- the machine

class Delivery:
    """Routes one message through its plan. Create one per message (and per resume)."""

    # slots: no per-message attribute dict (the daemon keeps every pending message in memory,
    # the simulator makes one per simulated message) and the fastest attribute access
    __slots__ = ("message_id", "_events", "plan", "recipient", "accepted_at", "rng", "health", "run",
                 "message_deadline", "_nodes", "root", "status", "finished_at", "delivered_at", "attempts",
                 "duplicates", "_runs", "_seq", "_out", "_timer", "_want", "_groups", "_chans", "_tried",
                 "_due", "_dueseq", "draining", "held", "_resume", "limiter", "priority")

    def __init__(self, message_id: str, plan: Plan, recipient: Mapping[str, Any], accepted_at: float,
                 rng: random.Random, health: HealthTracker | None = None, run: int = 0,
                 events: frozenset[str] | None = None, limiter: Limiter | None = None,
                 priority: int = 0) -> None:
        """`events`: the event types to emit as RecordEvent commands (None: all of them). A driver
        that reads only some types (the simulator) passes those; every other command, `status`,
        `attempts` and the like are the same either way. `limiter`: the fleet's rate limits
        (daemon/core/limiter.py), asked for a slot before each attempt on a limited provider;
        `priority`: this message's place in those providers' queues (higher goes first)."""
        self.message_id = message_id
        self._events = events
        self.plan = plan
        self.recipient = recipient
        self.accepted_at = accepted_at
        self.rng = rng
        self.health = health if health is not None else HealthTracker()
        self.run = run
        self.message_deadline = accepted_at + plan.message_timeout_ms / 1000.0
        self._nodes: dict[int, _Group | _Channel] = {}     # groups and channels (the parents) by `pre`
        self.root = _build(plan.root, -1, 0, self._nodes)
        self.status: Literal["pending", "delivered", "undeliverable", "expired", "cancelled"] = "pending"
        self.finished_at: float | None = None
        self.delivered_at: float | None = None
        self.attempts: dict[str, AttemptRecord] = {}
        self.duplicates = 0
        self._runs: dict[str, _Run] = {}            # attempt_id -> run, for every attempt ever made
        self._seq = 0
        self._out: list[Command] = []
        self._timer: float | None = None            # the wake-up last handed to the driver
        self._want: float | None = self.message_deadline   # the earliest deadline, as of the last settle
        # only nodes that ever started can be alive: deadlines and cuts look at these alone
        self._groups: list[_Group] = []
        self._chans: list[_Channel] = []
        self._tried: list[_Run] = []
        # Every deadline ever set, as (time, rank, pre, seq, node), a min-heap. An entry whose
        # node has since moved on is dropped when it reaches the top (deadlines.earliest): finding the
        # next deadline costs O(log n) per deadline, not a scan of every channel and attempt,
        # so a step never grows with the square of a message's attempts (docs/security.md).
        self._due: list[tuple[float, int, int, int, _Node]] = []
        self._dueseq = 0
        self.draining = False                       # drain() was called: no attempt starts any more
        self.held = 0                               # provider runs waiting for the next run (drain)
        self._resume: _Resume | None = None         # set by adopt() (a resumed delivery)
        self.limiter = limiter
        self.priority = priority

    # ------------------------------------------------------------------ public inputs

    @property
    def terminal(self) -> bool:
        return self.status != "pending"

    @property
    def next_wakeup(self) -> float | None:
        return self._timer

    def adopt(self, records: "list[AttemptRecord]") -> None:
        """Call before start() on a delivery resumed after a restart: `records` are attempts of
        its earlier runs (other attempt ids than this run's). A channel one of them delivered is
        not run again; an attempt answered 2xx and awaiting its receipt is waited for instead of
        being sent again (daemon/core/resume.py says exactly what counts)."""
        _adopt(self, records)

    def start(self, now: float) -> list[Command]:
        if self._wants(STARTED):
            self._emit(STARTED, now, route=self.plan.route, policy_version=self.plan.policy_version,
                       message_deadline=self.message_deadline, run=self.run)
        if now >= self.message_deadline:
            # resumed (e.g. after a restart) past its absolute deadline: it expired, nothing ran
            self._emit(MESSAGE_DEADLINE, self.message_deadline)
            finish(self, now, deadline_hit=True)
        else:
            start_node(self, self.root, now)
            # a zero timeout gives a deadline of `now`: handle it in this batch, not a wake-up later
        return self._settle(now)

    def on_outcome(self, attempt_id: str, outcome: Outcome, now: float) -> list[Command]:
        self._catch_up(now)
        run = self._runs.get(attempt_id)
        if not (self.status != "pending" or run is None or run.state != ATTEMPTING or run.attempt is None
                or run.attempt.attempt_id != attempt_id):
            handle_outcome(self, run, outcome, now)
        # (else a cancelled/finished attempt: its answer no longer counts.) Either way, whatever
        # falls due at `now` is handled before returning: nothing stays alive at its deadline.
        return self._settle(now)

    def on_receipt(self, attempt_id: str, status: str, now: float) -> list[Command]:
        self._catch_up(now)
        run = self._runs.get(attempt_id)
        rec = self.attempts.get(attempt_id)
        if run is None or rec is None:
            self._emit(RECEIPT_UNKNOWN, now, attempt_id=attempt_id, status=status)
            return self._settle(now)
        current = run.attempt is not None and run.attempt.attempt_id == attempt_id \
            and run.state in (ATTEMPTING, AWAITING)
        if self.status != "pending" or not current:
            late_receipt(self, run, rec, status, now)
        elif status == "delivered":
            if run.state == ATTEMPTING:
                self._out.append(CancelAttempt(attempt_id, "receipt arrived before the response"))
            self._end_attempt(rec, "delivered", rec.status_code, now)
            self._record_health(run, True, now)
            run_delivered(self, run, rec, now)
        else:
            if run.state == ATTEMPTING:
                self._out.append(CancelAttempt(attempt_id, "failed receipt"))
            self._end_attempt(rec, "failed", rec.status_code, now)
            self._record_health(run, False, now)
            retry_or_fail(self, run, now, None, "failed receipt")
        return self._settle(now)

    def on_earlier_receipt(self, rec: AttemptRecord, status: str, now: float) -> list[Command]:
        """A receipt for an attempt of an earlier run that adopt() did not take over (the restart
        cut it mid-call, or it had ended): recorded as `late_receipt`. A `delivered` one counts
        while the message is pending, as a late receipt of this run's attempts does: its channel
        is delivered (what runs under a `single` scope it satisfies is cut); a channel not
        started yet completes delivered when it starts. `rec` becomes this delivery's record."""
        self._catch_up(now)
        earlier_receipt(self, rec, status, now)
        return self._settle(now)


    def on_timer(self, now: float) -> list[Command]:
        # Always answer with the wake-up still wanted, even if unchanged: a driver whose timer
        # fired a hair early (float rounding) has consumed it, and would otherwise never wake again.
        return self._settle(now, rearm=True)

    def cancel(self, now: float) -> list[Command]:
        """The message is cancelled (a client's cancel request): stop routing it. Every attempt in
        flight is cancelled (CancelAttempt, outcome "cancelled", reason "message cancelled"),
        back-offs are dropped, each running channel reports `channel_finished` (result
        "cancelled"), and the message finishes `cancelled` (a `finished` event, Finish). Deadlines
        that passed before `now` fire first, so a message that expired or was delivered by then
        keeps that status. On a finished delivery it is a no-op (no commands)."""
        if self.terminal:
            return []
        self._catch_up(now)
        if not self.terminal:
            cancel_under(self, self.root, now, "cancelled", "message cancelled")
            self.status = "cancelled"
            self.finished_at = now
            if self._wants(FINISHED):
                self._emit(FINISHED, now, status=self.status)
            self._out.append(_tnew(Finish, (self.status, now, self.delivered_at)))
        return self._flush()

    def on_provider_unhealthy(self, provider: str, now: float) -> list[Command]:
        """`provider`'s breaker has just opened: stop waiting on it.

        Optional input. A driver that sees a `breaker_opened` event (from any delivery; the
        HealthTracker is shared) may call this, at that same `now`, on every other pending
        delivery that has an attempt in flight on that provider. Each such attempt is cancelled
        (CancelAttempt and outcome "cancelled", reason "breaker opened") and its provider run
        fails over at once to the next provider - as after a retryable failure, but without a
        retry on that provider and without counting a breaker failure (the provider's health
        did not change). A pending back-off retry of that provider is given up the same way.
        Attempts already answered 2xx and awaiting their receipt are left alone: the provider
        accepted those. Nothing happens unless this delivery's HealthTracker refuses the
        provider right now (open, no probe due: HealthTracker.blocks) and the provider has a
        breaker in this delivery's plan, so a late, repeated or stray call is harmless; on a
        finished delivery it is a no-op.
        """
        self._catch_up(now)
        provider_unhealthy(self, provider, now)
        return self._settle(now)


    def release_waits(self) -> None:
        """This driver lets go of the message without a Finish (another process took it over:
        daemon/cluster.py): its runs queued on a rate-limited provider stop waiting, so that the
        limiter neither keeps their places ahead of other messages nor hands them turns. Nothing
        else changes: the message's state belongs to its new owner."""
        for ch in self._chans:
            for run in ch.children:
                if isinstance(run, _Run) and run.state == QUEUED:
                    unqueue(self, run)
                    run.state = DONE

    def on_slot(self, run: _Run, granted: bool, wait_s: float, now: float) -> list[Command]:
        """The fleet's limiter (daemon/core/limiter.py) answers a run that queued for its turn on a
        rate-limited provider (Fleet.dispatch): granted, its attempt starts now (the slot is
        taken: a token, a call in flight); not granted, its turn has slipped past what its
        channel deadline allows (`wait_s` the expected wait) and it spills over at once to the
        next provider. A run no longer queued (its channel ended meanwhile) gives a granted slot
        back; the limiter drops such waiters itself, so that is a rare race, not the rule."""
        self._catch_up(now)
        lim = self.limiter
        if self.status != "pending" or run.state != QUEUED:
            if granted and lim is not None:
                lim.refund(run.step.provider, now)
        elif not granted:
            spill(self, run, wait_s, now)
        elif self.draining or self.health.blocks(run.step.provider, now):
            if lim is not None:
                lim.refund(run.step.provider, now)
            if self.draining:
                hold(self, run, now)
            else:
                ch = self._channel_of(run)
                self._emit(PROVIDER_SKIPPED, now, channel=ch.step.channel, provider=run.step.provider,
                           reason="breaker open")
                complete(self, run, "failed", now, reason="skipped")
        else:
            begin(self, run, self._channel_of(run), now, queued=True)
        return self._settle(now)


    def drain(self) -> None:
        """The driver is stopping (the daemon's SIGTERM grace period): start no attempt from now on.

        Optional input, for a driver that lets the attempts in flight answer before it stops and
        resumes its pending messages with a new Delivery (run + 1) on its next start. Where this
        delivery would start an attempt -- a first try, a retry after its back-off, a failover --
        the provider is held instead: an `attempt_held` event (channel, provider), no
        StartAttempt, no attempt record, no try used and no breaker consulted or counted (a held
        provider did nothing). A held provider never ends, so it keeps its channel, and the scopes
        above it, from completing, and the deadline of a channel holding one does not fire: the
        next run tries that channel afresh. So a draining delivery is never finished for lack of
        an attempt; it still finishes on what really happens -- an answer or receipt of an
        attempt in flight (delivered, or every option really tried and failed), or the message
        deadline. `held` counts the held providers: a delivery with held > 0 waits for its next
        run. Commands are not changed by the call itself; it is a no-op on a finished delivery."""
        self.draining = True

    def rebase(self, delta: float) -> None:
        """The driver moved its time axis by `delta` seconds (the daemon follows a step of the wall
        clock, docs/reliability.md "Clean restarts"): the instant that was `t` is now `t + delta`.
        Every time this delivery holds -- acceptance, deadlines, back-off wake-ups, slow-call
        marks, its attempts' times and the wake-up it asked for -- moves by `delta`, so nothing
        fires earlier or later than it would have. No commands: the driver moves the wake-up it
        holds itself (next_wakeup is already moved)."""
        _rebase(self, delta)

    # ------------------------------------------------------------------ plumbing

    def _wants(self, type_: str) -> bool:
        """Whether the driver reads events of this type. The hot paths ask first, so that events a
        driver does not read (the simulator reads few) cost no keyword dict either."""
        evs = self._events
        return evs is None or type_ in evs

    def _emit(self, type_: str, now: float, **data: Any) -> None:
        evs = self._events
        if evs is None or type_ in evs:
            self._out.append(_tnew(Event, (type_, now, data)))   # = Event(type_, now, data)

    def _settle(self, now: float, rearm: bool = False) -> list[Command]:
        """Fire whatever is due at `now`, then hand out the commands and the wake-up wanted."""
        advance(self, now, inclusive=True)
        return self._flush(rearm)

    def _flush(self, rearm: bool = False) -> list[Command]:
        want = None if self.status != "pending" else self._want
        if want != self._timer or (rearm and want is not None):
            self._timer = want
            self._out.append(_tnew(SetTimer, (want,)))
        out, self._out = self._out, []
        return out

    def _catch_up(self, now: float) -> None:
        """Before an input at `now`: fire the deadlines that passed strictly before it."""
        want = self._want        # nothing changed since the last settle: still the earliest deadline
        if want is not None and want < now:
            advance(self, now, inclusive=False)

    def _push(self, t: float, rank: int, node: _Node) -> None:
        self._dueseq += 1
        heappush(self._due, (t, rank, node.pre, self._dueseq, node))

    def _channel_of(self, run: _Run) -> _Channel:
        ch = self._nodes[run.parent]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(ch, _Channel)
        return ch

    def _end_attempt(self, rec: AttemptRecord, outcome: str, status: int | None, now: float,
                     detail: str = "") -> None:
        rec.ended_at = now
        rec.outcome = outcome
        rec.status_code = status
        ev = self._events
        if ev is None or ATTEMPT_ENDED in ev:
            data: dict[str, Any] = {"attempt_id": rec.attempt_id, "channel": rec.channel,
                                    "provider": rec.provider, "outcome": outcome, "status_code": status}
            if detail:
                data["detail"] = detail
            self._out.append(_record(ATTEMPT_ENDED, now, data))

    def _record_health(self, run: _Run, ok: bool, now: float) -> None:
        s = run.step
        if s.breaker_failures is None:      # breaker off: HealthTracker.record would answer None
            return
        if not ok and run.slow_counted:     # its slow-call mark already counted this attempt's failure
            return
        change = self.health.record(s.provider, ok, s.breaker_failures, s.breaker_cooldown_ms / 1000.0, now)
        if change is not None:
            self._emit(BREAKER_OPENED if change == "opened" else BREAKER_CLOSED, now, provider=s.provider)
