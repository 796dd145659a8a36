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
cut-over, the early-timer clamp), which both drivers use. This module is the machine itself: one
class whose transitions share their state, which is why it stays over ~400 lines.

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
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any, Literal, Mapping

from .commands import (ATTEMPT_ACCEPTED, ATTEMPT_ENDED, ATTEMPT_HELD, ATTEMPT_QUEUED,  # noqa: F401 - re-exported
                       ATTEMPT_RESUMED, PROVIDER_SPILLED,
                       ATTEMPT_SLOW, ATTEMPT_STARTED, BREAKER_CLOSED, BREAKER_OPENED, CHANNEL_DEADLINE,
                       CHANNEL_FINISHED, CHANNEL_SKIPPED, CHANNEL_STARTED, DELIVERED, DUPLICATE, EVENT_TYPES,
                       FAILOVER, FINISHED, LATE_RECEIPT, MESSAGE_DEADLINE, PROVIDER_SKIPPED, RECEIPT_TIMEOUT,
                       RECEIPT_UNKNOWN, RETRY_ABANDONED, RETRY_SCHEDULED, STARTED, AttemptOutcomeName,
                       AttemptRecord, CancelAttempt, Command, Event, Finish, Outcome, RecordEvent, SetTimer,
                       StartAttempt, _record, _tnew)
from .health import HealthTracker
from .limiter import GO, SPILL, Limiter
from .plan import Plan
from .tree import (ATTEMPTING, AWAITING, BACKOFF, DONE, HELD, QUEUED, RANK_ATTEMPT, RANK_BACKOFF, RANK_CHANNEL,
                   RANK_MESSAGE, RANK_SLOW, _build, _by_pre, _Channel, _Group, _name, _Node, _Resume, _Run)

# --------------------------------------------------------------------------- the machine


def _moved(t: float | None, delta: float) -> float | None:
    """An optional time on a time axis moved by `delta` (Delivery.rebase); None stays None."""
    return None if t is None else t + delta


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
        # node has since moved on is dropped when it reaches the top (_earliest): finding the
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
        its earlier runs (other attempt ids than this run's). Two kinds count, the others are
        history only (their channel runs again: at-least-once):

          * outcome "delivered": the channel it ran in (the first channel of that name in plan
            order that has its provider) counts as delivered and is not run again, and the
            message's delivered_at is the earliest such attempt's ended_at;
          * not ended, with a 2xx status_code (answered, awaiting its receipt): when its channel
            starts, that provider's run waits for the receipt of this very attempt, until
            min(receipt_deadline, channel deadline) (receipt_deadline None: the channel
            deadline; one that passed while routingd was down: the start's `now`), instead of
            calling the provider again; on_receipt() takes its receipt.

        `single` scopes on the way to such a channel (and a `single` channel to such a provider)
        start at it: what came before it in plan order was tried in an earlier run."""
        res = _Resume()
        for rec in records:
            found = self._locate(rec.channel, rec.provider)
            if found is None:
                continue                    # the plan no longer has it: history only
            ch, i = found
            if rec.outcome == "delivered":
                res.delivered.add(ch.pre)
                at = rec.ended_at if rec.ended_at is not None else rec.started_at
                if self.delivered_at is None or at < self.delivered_at:
                    self.delivered_at = at
            elif rec.outcome is None and rec.ended_at is None and rec.status_code is not None \
                    and 200 <= rec.status_code < 300:
                if ch.pre + i in res.awaiting:
                    continue                # one awaited attempt per run (the first found)
                res.awaiting[ch.pre + i] = rec
                if ch.method == "single":
                    res.first[ch.pre] = min(res.first.get(ch.pre, i - 1), i - 1)
            else:
                continue
            node: _Node = ch
            while node.parent >= 0:
                parent = self._nodes[node.parent]
                if parent.method == "single":
                    k = parent.children.index(node)
                    res.first[parent.pre] = min(res.first.get(parent.pre, k), k)
                node = parent
        self._resume = res

    def _locate(self, channel: str, provider: str) -> "tuple[_Channel, int] | None":
        """The first channel named `channel` in plan order with `provider`, and the provider's
        1-based position in it (its run's pre is the channel's pre + that)."""
        for n in self._nodes.values():
            if isinstance(n, _Channel) and n.step.channel == channel:
                for i, p in enumerate(n.step.providers, 1):
                    if p.provider == provider:
                        return n, i
        return None

    def _adopt(self, run: _Run, rec: AttemptRecord, now: float) -> None:
        """Start `run` on an earlier run's attempt that awaits its receipt (see adopt())."""
        ch = self._channel_of(run)
        run.tries = rec.try_no
        self._tried.append(run)
        rt = rec.receipt_deadline
        # A receipt deadline that passed while routingd was down is due now, not back then: what
        # follows it (a retry, a failover) starts at `now` with its whole timeout. Fired at the old
        # deadline, the next attempts would start in the past with deadlines already gone, and
        # time out before they were ever made (docs/reliability.md "Restarts").
        rec.receipt_deadline = max(now, ch.deadline if rt is None else min(rt, ch.deadline))
        self.attempts[rec.attempt_id] = rec
        self._runs[rec.attempt_id] = run
        run.attempt = rec
        run.state = AWAITING
        run.slow_counted = False
        self._push(rec.receipt_deadline, RANK_ATTEMPT, run)
        self._emit(ATTEMPT_RESUMED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
                   receipt_deadline=rec.receipt_deadline)

    def start(self, now: float) -> list[Command]:
        if self._wants(STARTED):
            self._emit(STARTED, now, route=self.plan.route, policy_version=self.plan.policy_version,
                       message_deadline=self.message_deadline, run=self.run)
        if now >= self.message_deadline:
            # resumed (e.g. after a restart) past its absolute deadline: it expired, nothing ran
            self._emit(MESSAGE_DEADLINE, self.message_deadline)
            self._finish(now, deadline_hit=True)
        else:
            self._start_node(self.root, now)
            # a zero timeout gives a deadline of `now`: handle it in this batch, not a wake-up later
        return self._settle(now)

    def on_outcome(self, attempt_id: str, outcome: Outcome, now: float) -> list[Command]:
        self._catch_up(now)
        run = self._runs.get(attempt_id)
        if not (self.status != "pending" or run is None or run.state != ATTEMPTING or run.attempt is None
                or run.attempt.attempt_id != attempt_id):
            self._handle_outcome(run, outcome, now)
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
            self._late_receipt(run, rec, status, now)
        elif status == "delivered":
            if run.state == ATTEMPTING:
                self._out.append(CancelAttempt(attempt_id, "receipt arrived before the response"))
            self._end_attempt(rec, "delivered", rec.status_code, now)
            self._record_health(run, True, now)
            self._run_delivered(run, rec, now)
        else:
            if run.state == ATTEMPTING:
                self._out.append(CancelAttempt(attempt_id, "failed receipt"))
            self._end_attempt(rec, "failed", rec.status_code, now)
            self._record_health(run, False, now)
            self._retry_or_fail(run, now, None, "failed receipt")
        return self._settle(now)

    def on_earlier_receipt(self, rec: AttemptRecord, status: str, now: float) -> list[Command]:
        """A receipt for an attempt of an earlier run that adopt() did not take over (the restart
        cut it mid-call, or it had ended): recorded as `late_receipt`. A `delivered` one counts
        while the message is pending, as a late receipt of this run's attempts does: its channel
        is delivered (what runs under a `single` scope it satisfies is cut); a channel not
        started yet completes delivered when it starts. `rec` becomes this delivery's record."""
        self._catch_up(now)
        found = self._locate(rec.channel, rec.provider) if rec.attempt_id not in self.attempts else None
        if status != "delivered" or self.status != "pending" or found is None:
            self._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
                       provider=rec.provider, previous_run=True)
            return self._settle(now)
        ch, i = found
        if ch.started and ch.children:
            run = ch.children[i - 1]
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(run, _Run)
            self.attempts[rec.attempt_id] = rec
            self._runs[rec.attempt_id] = run
            self._late_receipt(run, rec, status, now)
        else:
            self._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
                       provider=rec.provider, previous_run=True)
            if self._resume is None:
                self._resume = _Resume()
            self._resume.delivered.add(ch.pre)
            if self.delivered_at is None:
                self.delivered_at = now
            self._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
                       late=True)
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
            self._cancel_under(self.root, now, "cancelled", "message cancelled")
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
        if self.status == "pending" and self.health.blocks(provider, now):
            hit = [r for r in self._tried if r.step.provider == provider and r.step.breaker_failures is not None
                   and (r.state == ATTEMPTING or r.state == BACKOFF)]
            if len(hit) > 1:
                hit.sort(key=_by_pre)
            for run in hit:
                # what an earlier one set off (a channel ending, a failover) may have ended it already
                if self.status != "pending" or run.result is not None or \
                        not (run.state == ATTEMPTING or run.state == BACKOFF):
                    continue
                self._cut_run(run, now)
        return self._settle(now)

    def release_waits(self) -> None:
        """This driver lets go of the message without a Finish (another process took it over:
        daemon/cluster.py): its runs queued on a rate-limited provider stop waiting, so that the
        limiter neither keeps their places ahead of other messages nor hands them turns. Nothing
        else changes: the message's state belongs to its new owner."""
        for ch in self._chans:
            for run in ch.children:
                if isinstance(run, _Run) and run.state == QUEUED:
                    self._unqueue(run)
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
            self._spill(run, wait_s, now)
        elif self.draining or self.health.blocks(run.step.provider, now):
            if lim is not None:
                lim.refund(run.step.provider, now)
            if self.draining:
                self._hold(run, now)
            else:
                ch = self._channel_of(run)
                self._emit(PROVIDER_SKIPPED, now, channel=ch.step.channel, provider=run.step.provider,
                           reason="breaker open")
                self._complete(run, "failed", now, reason="skipped")
        else:
            self._begin(run, self._channel_of(run), now, queued=True)
        return self._settle(now)

    def _spill(self, run: _Run, wait_s: float, now: float) -> None:
        ch = self._channel_of(run)
        run.state = DONE
        self._emit(PROVIDER_SPILLED, now, channel=ch.step.channel, provider=run.step.provider,
                   expected_wait_s=wait_s)
        self._complete(run, "failed", now, reason="rate limited")

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
        self.accepted_at += delta
        self.message_deadline += delta
        self.finished_at = _moved(self.finished_at, delta)
        self.delivered_at = _moved(self.delivered_at, delta)
        for rec in self.attempts.values():
            rec.started_at += delta
            rec.deadline += delta
            rec.ended_at = _moved(rec.ended_at, delta)
            rec.receipt_deadline = _moved(rec.receipt_deadline, delta)
        for ch in self._chans:
            ch.deadline += delta
        for run in self._tried:
            run.wake_at = _moved(run.wake_at, delta)
            run.slow_at = _moved(run.slow_at, delta)
        # The deadline heap moves as a whole: an entry is live only while it equals its node's
        # time, and a uniform shift keeps the heap ordered.
        self._due = [(t + delta, rank, pre, seq, node) for t, rank, pre, seq, node in self._due]
        self._want = _moved(self._want, delta)
        self._timer = _moved(self._timer, delta)

    def _hold(self, run: _Run, now: float) -> None:
        if run.tries == 0:
            self._tried.append(run)         # so that cutting its channel ends it like any started run
        run.state = HELD
        run.wake_at = None
        run.slow_at = None
        self.held += 1
        ch = self._channel_of(run)
        ch.holding = True
        self._emit(ATTEMPT_HELD, now, channel=ch.step.channel, provider=run.step.provider)

    def _cut_run(self, run: _Run, now: float) -> None:
        """Its provider's breaker is open: stop the run's attempt (or back-off) and fail over."""
        rec = run.attempt
        if run.state == ATTEMPTING and rec is not None:
            self._out.append(CancelAttempt(rec.attempt_id, "breaker opened"))
            self._end_attempt(rec, "cancelled", None, now, "breaker opened")
        else:
            self._emit(RETRY_ABANDONED, now, channel=self._channel_of(run).step.channel,
                       provider=run.step.provider, reason="breaker opened")
        run.state = DONE
        run.wake_at = None
        run.slow_at = None
        self._complete(run, "failed", now, reason="breaker opened")

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
        self._advance(now, inclusive=True)
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
            self._advance(now, inclusive=False)

    def _advance(self, now: float, inclusive: bool) -> None:
        """Fire every deadline that has come due, earliest first; message before channel before attempt.

        Leaves the earliest deadline still ahead in self._want (None once terminal)."""
        # Each pass ends a node, starts an attempt or fires one attempt's slow mark or back-off:
        # a bound that grows with the plan and the attempts made, never hit by a sound machine.
        passes = 0
        while passes <= 64 + 4 * (self.root.end + len(self.attempts)):
            passes += 1
            if self.status != "pending":
                self._want = None
                return
            t, rank, node = self._earliest()
            if t > now or (t == now and not inclusive):
                self._want = t
                return
            if rank == RANK_MESSAGE:
                self._emit(MESSAGE_DEADLINE, t)
                self._finish(t, deadline_hit=True)
            elif rank == RANK_CHANNEL:
                if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                    assert isinstance(node, _Channel)
                self._emit(CHANNEL_DEADLINE, t, channel=node.step.channel)
                self._cancel_under(node, t, "timeout", "channel deadline")
                self._complete(node, "failed", t, reason="timeout")
            elif rank == RANK_BACKOFF:
                if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                    assert isinstance(node, _Run)
                node.wake_at = None
                self._try(node, t)
            elif rank == RANK_SLOW:
                if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                    assert isinstance(node, _Run) and node.attempt
                # slow-call mark: the attempt runs on, but counts as a breaker failure now
                node.slow_at = None
                rec = node.attempt
                self._emit(ATTEMPT_SLOW, t, attempt_id=rec.attempt_id, channel=rec.channel,
                           provider=rec.provider, after_s=t - rec.started_at)
                self._record_health(node, False, t)
                node.slow_counted = True
                if self.health.blocks(rec.provider, t):
                    # the breaker is open now (this mark opened it, or re-opened it after a
                    # half-open probe that is this very attempt): fail over at once, as
                    # on_provider_unhealthy does for every other message's attempts on it
                    self._cut_run(node, t)
            else:                                           # RANK_ATTEMPT
                if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                    assert isinstance(node, _Run) and node.attempt
                rec = node.attempt
                if node.state == ATTEMPTING:
                    self._out.append(CancelAttempt(rec.attempt_id, "attempt deadline"))
                    self._end_attempt(rec, "timeout", None, t)
                    self._record_health(node, False, t)
                    self._retry_or_fail(node, t, None, "timeout", retryable=self.plan.failover.timeout)
                else:                                       # awaiting its receipt
                    self._end_attempt(rec, "timeout", rec.status_code, t)
                    self._emit(RECEIPT_TIMEOUT, t, attempt_id=rec.attempt_id)
                    self._record_health(node, False, t)
                    self._retry_or_fail(node, t, None, "receipt timeout")
        raise RuntimeError("engine: deadline processing did not settle")  # pragma: no cover

    def _earliest(self) -> tuple[float, int, _Node | None]:
        """The first deadline by (time, rank, plan order): RANK_MESSAGE, RANK_CHANNEL, RANK_ATTEMPT
        (its receipt too), RANK_BACKOFF, RANK_SLOW (daemon/core/tree.py)."""
        due = self._due
        md = self.message_deadline
        while due:
            t, rank, _pre, _seq, node = due[0]
            if self._live(t, rank, node):
                if md <= t:
                    break
                return t, rank, node
            heappop(due)
        return md, RANK_MESSAGE, None

    def _live(self, t: float, rank: int, node: _Node) -> bool:
        """Whether the heap entry (t, rank, node) is still a deadline of `node`."""
        if rank == RANK_CHANNEL:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Channel)
            return node.result is None and node.deadline == t and not node.holding
        if TYPE_CHECKING:           # narrowing for the type checker only: no isinstance per call
            assert isinstance(node, _Run)
        st = node.state
        rec = node.attempt
        if rank == RANK_ATTEMPT:
            if st == ATTEMPTING:
                return rec is not None and rec.deadline == t
            return st == AWAITING and rec is not None and rec.receipt_deadline == t
        if rank == RANK_BACKOFF:
            return st == BACKOFF and node.wake_at == t
        return st == ATTEMPTING and node.slow_at == t

    def _push(self, t: float, rank: int, node: _Node) -> None:
        self._dueseq += 1
        heappush(self._due, (t, rank, node.pre, self._dueseq, node))

    def _channel_of(self, run: _Run) -> _Channel:
        ch = self._nodes[run.parent]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(ch, _Channel)
        return ch

    # ------------------------------------------------------------------ starting nodes

    def _start_node(self, node: _Node, now: float) -> None:
        node.started = True
        kind = type(node)
        res = self._resume
        if kind is _Run:
            if res is not None and node.pre in res.awaiting:
                self._adopt(node, res.awaiting.pop(node.pre), now)      # type: ignore[arg-type]
                return
            self._try(node, now)            # type: ignore[arg-type]
            return
        if kind is _Channel:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Channel)
            self._chans.append(node)
            step = node.step
            if step.requires and not self.recipient.get(step.requires):
                self._emit(CHANNEL_SKIPPED, now, channel=step.channel,
                           reason=f"recipient has no {step.requires!r}")
                self._complete(node, "skipped", now)
                return
            pre = node.pre
            node.children = [_Run(p, pre, pre + i) for i, p in enumerate(step.providers, 1)]
            node.deadline = min(now + step.timeout_ms / 1000.0, self.message_deadline)
            self._push(node.deadline, RANK_CHANNEL, node)
            self._emit(CHANNEL_STARTED, now, channel=step.channel, deadline=node.deadline)
            if res is not None and pre in res.delivered:
                res.delivered.discard(pre)
                self._complete(node, "delivered", now, reason="delivered before a restart")
                return
            if node.deadline <= now:
                self._complete(node, "failed", now, reason="timeout")
                return
        else:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Group)
            self._groups.append(node)
        if not node.children:
            self._complete(node, "failed", now)
            return
        if node.method == "single":
            node.idx = 0 if res is None else res.first.pop(node.pre, 0)
            self._start_node(node.children[node.idx], now)
        else:
            node.launching = True
            for child in node.children:
                if node.result is not None or self.status != "pending":
                    break
                self._start_node(child, now)
            node.launching = False
            self._check_all_done(node, now)

    def _try(self, run: _Run, now: float) -> None:
        if self.draining:
            self._hold(run, now)            # see drain(): before the breaker, which a probe would consume
            return
        step = run.step
        ch = self._nodes[run.parent]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(ch, _Channel)
        if (step.breaker_failures is not None or self.health.drained) and \
                not self.health.allow(step.provider, step.breaker_failures, step.breaker_cooldown_ms / 1000.0, now):
            self._emit(PROVIDER_SKIPPED, now, channel=ch.step.channel, provider=step.provider,
                       reason="drained" if step.provider in self.health.drained else "breaker open")
            self._complete(run, "failed", now, reason="skipped")
            return
        lim = self.limiter
        if lim is not None and lim.limited(step.provider):
            # Its turn on a rate-limited provider (docs/configuration.md "Rate limits and
            # priorities"): wait for it only while an attempt could still follow it before the
            # channel deadline -- with its full provider timeout when a next provider could take
            # the message instead, else any time before the deadline -- else spill over now.
            latest = ch.deadline
            if ch.method == "single" and run.pre - ch.pre < len(ch.children):
                latest -= step.timeout_ms / 1000.0
            verdict, turn = lim.request(step.provider, self, run, self.priority, now, latest)
            if verdict == SPILL:
                self._spill(run, turn - now, now)
                return
            if verdict != GO:
                if run.tries == 0:
                    self._tried.append(run)     # so that cutting its channel ends it like any started run
                run.state = QUEUED
                run.wake_at = None
                self._emit(ATTEMPT_QUEUED, now, channel=ch.step.channel, provider=step.provider,
                           expected_wait_s=turn - now)
                return
        self._begin(run, ch, now)

    def _begin(self, run: _Run, ch: _Channel, now: float, queued: bool = False) -> None:
        """Start an attempt of `run` now (its breaker and its rate limit said yes)."""
        step = run.step
        run.tries += 1
        if run.tries == 1 and not queued:           # a run that queued first is listed already
            self._tried.append(run)
        self._seq += 1
        attempt_id = f"{self.message_id}.{self.run}.{self._seq}"
        deadline = min(now + step.timeout_ms / 1000.0, ch.deadline)
        channel = ch.step.channel
        rec = AttemptRecord(attempt_id, channel, step.provider, run.tries, now, deadline)
        self.attempts[attempt_id] = rec
        self._runs[attempt_id] = run
        run.attempt = rec
        run.state = ATTEMPTING
        run.slow_counted = False
        slow = step.breaker_slow_ms
        if slow is not None and step.breaker_failures is not None:
            mark = now + slow / 1000.0
            run.slow_at = mark if mark < deadline else None
            if run.slow_at is not None:
                self._push(mark, RANK_SLOW, run)
        self._push(deadline, RANK_ATTEMPT, run)
        if self._wants(ATTEMPT_STARTED):
            self._emit(ATTEMPT_STARTED, now, attempt_id=attempt_id, channel=channel, provider=step.provider,
                       attempt=run.tries, deadline=deadline)
        self._out.append(_tnew(StartAttempt, (                    # = StartAttempt(...), field order
            attempt_id, self.message_id, channel, step.provider, run.tries, now, deadline,
            f"{self.message_id}:{channel}:{step.provider}", step.confirm)))

    # ------------------------------------------------------------------ outcomes

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

    def _handle_outcome(self, run: _Run, o: Outcome, now: float) -> None:
        rec = run.attempt
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert rec is not None
        rule = self.plan.failover
        if o.network or o.status is None:
            self._end_attempt(rec, "network", None, now, o.detail)
            self._record_health(run, False, now)
            self._retry_or_fail(run, now, None, "network", retryable=rule.network)
            return
        if 200 <= o.status < 300:
            if run.step.confirm == "receipt":
                rec.status_code = o.status
                rec.receipt_deadline = min(now + run.step.receipt_timeout_ms / 1000.0,
                                         self._channel_of(run).deadline)
                run.state = AWAITING
                self._push(rec.receipt_deadline, RANK_ATTEMPT, run)
                self._emit(ATTEMPT_ACCEPTED, now, attempt_id=rec.attempt_id, status_code=o.status,
                           receipt_deadline=rec.receipt_deadline)
                return
            self._end_attempt(rec, "delivered", o.status, now)
            self._record_health(run, True, now)
            self._run_delivered(run, rec, now)
            return
        paced = False
        if o.status == 429 and self.limiter is not None:
            # the vendor's own limit: slow this provider's bucket down (adaptive, limiter.py)
            self.limiter.on_throttled(run.step.provider, now, o.retry_after_s)
            # With an outbound rate_limit the limiter answers a 429 (it lowered the rate above):
            # the provider works, it is only asked too fast, so the 429 is no breaker failure --
            # a burst of them must not open the breaker and push everything to the backup
            # (docs/configuration.md "Rate limits and priorities"). The attempt still fails over.
            paced = self.limiter.rate_limited(run.step.provider)
        if rule.status_retryable(o.status):
            self._end_attempt(rec, "failed", o.status, now, o.detail)
            if not paced:
                self._record_health(run, False, now)
            self._retry_or_fail(run, now, o.retry_after_s, f"status {o.status}")
        else:
            self._end_attempt(rec, "rejected", o.status, now, o.detail)
            run.state = DONE
            self._channel_of(run).rejected = True
            self._complete(run, "failed", now, reason=f"rejected with status {o.status}")

    def _retry_or_fail(self, run: _Run, now: float, retry_after: float | None, reason: str,
                       retryable: bool = True) -> None:
        step = run.step
        ch = self._channel_of(run)
        # the run goes to BACKOFF or, through _complete, to DONE (never DONE and back: RUN_TRANSITIONS)
        if not retryable:
            ch.rejected = True
            self._complete(run, "failed", now, reason=f"{reason} (not in failover.on)")
            return
        if run.tries <= step.retries:
            if retry_after is not None:
                delay = max(0.0, retry_after)
            else:
                cap = min(step.backoff_max_ms, step.backoff_base_ms * (2 ** (run.tries - 1)))
                delay = self.rng.uniform(0.0, cap / 1000.0)
            if now + delay < ch.deadline:
                run.state = BACKOFF
                run.wake_at = now + delay
                self._push(run.wake_at, RANK_BACKOFF, run)
                self._emit(RETRY_SCHEDULED, now, channel=ch.step.channel, provider=step.provider,
                           at=run.wake_at, delay_s=delay, reason=reason)
                return
            self._emit(RETRY_ABANDONED, now, channel=ch.step.channel, provider=step.provider,
                       reason=f"back-off of {delay:.3f}s does not fit before the channel deadline")
        self._complete(run, "failed", now, reason=reason)

    def _run_delivered(self, run: _Run, rec: AttemptRecord, now: float) -> None:
        run.state = DONE
        if self.delivered_at is None:
            self.delivered_at = now
        if self._wants(DELIVERED):
            self._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider)
        root = self.root
        tried = self._tried
        if len(tried) == 1 and len(self._chans) == 1 and len(self._groups) == 1 and root.method == "single" \
                and root.result is None and self.status == "pending":
            ch = self._nodes[run.parent]
            if ch.parent == 0 and ch.method == "single" and ch.result is None:
                # The common case, in one go: the first attempt of the only channel started, right
                # under a `single` root, delivered. Nothing else ever ran, so nothing is left to cut:
                # exactly what _complete -> _child_done -> _complete(channel) -> _complete(root) ->
                # _finish do on this path, less their walks.
                run.result = "delivered"
                run.delivered = True
                ch.result = "delivered"
                ch.delivered = True
                self._emit(CHANNEL_FINISHED, now, channel=ch.step.channel, result="delivered")  # type: ignore[union-attr]
                root.result = "delivered"
                root.delivered = True
                self.status = "delivered"
                self.finished_at = now
                if self._wants(FINISHED):
                    self._emit(FINISHED, now, status="delivered")
                self._out.append(_tnew(Finish, ("delivered", now, self.delivered_at)))
                return
        self._complete(run, "delivered", now)

    def _late_receipt(self, run: _Run, rec: AttemptRecord, status: str, now: float) -> None:
        self._emit(LATE_RECEIPT, now, attempt_id=rec.attempt_id, status=status, channel=rec.channel,
                   provider=rec.provider)
        if status != "delivered" or rec.outcome == "delivered":
            return
        rec.outcome = "delivered"
        self._record_health(run, True, now)
        if self.terminal:
            if self.status == "delivered":
                self.duplicates += 1
                self._emit(DUPLICATE, now, attempt_id=rec.attempt_id, channel=rec.channel,
                           provider=rec.provider)
            return
        if self.delivered_at is None:
            self.delivered_at = now
        self._emit(DELIVERED, now, attempt_id=rec.attempt_id, channel=rec.channel, provider=rec.provider,
                   late=True)
        if run.result is None:
            # The provider is still being tried (a retry in flight or backing off) but an earlier
            # try did deliver: stop trying it and let the tree go on as for any delivery.
            self._stop_run(run, now, "delivered by a late receipt")
            self._complete(run, "delivered", now)
            return
        # Walk up: a single scope that already delivered through another child makes this a
        # duplicate; a single scope still running is satisfied now and stops what it runs.
        node: _Node = run
        node.delivered = True
        while node.parent >= 0:
            parent = self._nodes[node.parent]
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(parent, (_Group, _Channel))
            if parent.method == "single" and parent.delivered:
                self.duplicates += 1
                self._emit(DUPLICATE, now, attempt_id=rec.attempt_id, channel=rec.channel,
                           provider=rec.provider)
                return
            parent.delivered = True
            if parent.result is None and parent.method == "single":
                self._cancel_under(parent, now, "cancelled", "delivered by a late receipt")
                self._complete(parent, "delivered", now)
                return
            node = parent
        if self.root.result is not None and not self.terminal:
            self._finish(now)

    # ------------------------------------------------------------------ completion

    def _complete(self, node: _Node, result: str, now: float, reason: str = "") -> None:
        if node.result is not None:
            return
        node.result = result
        if result == "delivered":
            node.delivered = True
        kind = type(node)
        if kind is _Run:
            node.state = DONE         # type: ignore[attr-defined]
        elif kind is _Channel:
            if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
                assert isinstance(node, _Channel)
            self._cancel_under(node, now, "cancelled", "channel finished")
            res = "delivered" if node.delivered else result
            if result != "skipped":
                self._emit(CHANNEL_FINISHED, now, channel=node.step.channel, result=res,
                           **({"reason": reason} if reason else {}))
        if node.parent < 0:
            self._finish(now)
            return
        parent = self._nodes[node.parent]
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(parent, (_Group, _Channel))
        self._child_done(parent, node, now)

    def _child_done(self, parent: "_Group | _Channel", child: _Node, now: float) -> None:
        if parent.result is not None or self.terminal:
            return
        if child.delivered:
            parent.delivered = True
        if parent.method == "single":
            if child.delivered:
                self._complete(parent, "delivered", now)
                return
            if type(parent) is _Channel and parent.rejected:        # type: ignore[union-attr]
                self._complete(parent, "failed", now, reason="rejected")
                return
            parent.idx += 1
            if parent.idx >= len(parent.children):
                self._complete(parent, "failed", now, reason="every option exhausted")
                return
            nxt = parent.children[parent.idx]
            kind = "provider" if type(parent) is _Channel else "channel"
            self._emit(FAILOVER, now, kind=kind, **{"from": _name(child), "to": _name(nxt)})
            self._start_node(nxt, now)
        else:
            self._check_all_done(parent, now)

    def _check_all_done(self, node: "_Group | _Channel", now: float) -> None:
        if node.launching or node.result is not None or self.status != "pending":
            return
        # `idx` (unused by `all` scopes otherwise) is the first child not known to be finished:
        # results never go back to None, so the whole scan costs O(children) per node, not per call
        children = node.children
        i, n = node.idx, len(children)
        while i < n and children[i].result is not None:
            i += 1
        node.idx = i
        if i < n:
            return
        self._complete(node, "delivered" if node.delivered else "failed", now)

    def _cancel_under(self, node: _Node, now: float, outcome: str, reason: str) -> None:
        """Cut everything still running under `node`: live attempts are cancelled (last in plan
        order first), back-offs dropped, and every running channel reports its end (plan order).
        Only nodes that ever started can be running, so only those are looked at."""
        lo, hi = node.pre, node.end
        if isinstance(node, _Run):
            lo -= 1
        cut: list[_Run]
        if type(node) is _Channel:
            # its runs are its children: no walk over every run of the message per channel end
            runs: list[_Run] = node.children      # type: ignore[assignment, attr-defined]
            cut = [r for r in runs if (r.tries > 0 or r.state == QUEUED) and r.state != DONE]
        else:
            cut = [r for r in self._tried if lo < r.pre <= hi and r.state != DONE]
        if cut:
            if len(cut) > 1:
                cut.sort(key=_by_pre, reverse=True)
            for r in cut:
                rec = r.attempt
                if r.state == QUEUED:
                    self._unqueue(r)
                if rec is not None and (r.state == ATTEMPTING or r.state == AWAITING):
                    if r.state == ATTEMPTING:
                        self._out.append(CancelAttempt(rec.attempt_id, reason))
                    self._end_attempt(rec, outcome, rec.status_code, now, reason)
                r.state = DONE
                r.wake_at = None
                if r.result is None:
                    r.result = "failed"
        if isinstance(node, _Group):
            # channels and groups cut while running end here; each channel says so (in plan order)
            open_: list[_Node] = [n for n in self._chans if n.result is None and lo < n.pre <= hi]
            open_ += [n for n in self._groups if n.result is None and lo < n.pre <= hi]
            if len(open_) > 1:
                open_.sort(key=_by_pre)
            for n in open_:
                n.result = "delivered" if n.delivered else "failed"
                if isinstance(n, _Channel):
                    res = "delivered" if n.delivered else "timeout" if outcome == "timeout" else "cancelled"
                    self._emit(CHANNEL_FINISHED, now, channel=n.step.channel, result=res, reason=reason)

    def _unqueue(self, run: _Run) -> None:
        """A queued run stops waiting for its turn: the limiter forgets its waiter at once."""
        if self.limiter is not None:
            self.limiter.cancel(run.step.provider, run)

    def _stop_run(self, run: _Run, now: float, reason: str) -> None:
        """End a provider run early: cancel its live attempt and any pending back-off."""
        if run.state == QUEUED:
            self._unqueue(run)
        if run.state in (ATTEMPTING, AWAITING) and run.attempt is not None:
            if run.state == ATTEMPTING:
                self._out.append(CancelAttempt(run.attempt.attempt_id, reason))
            self._end_attempt(run.attempt, "cancelled", run.attempt.status_code, now, reason)
        run.state = DONE
        run.wake_at = None

    def _finish(self, now: float, deadline_hit: bool = False) -> None:
        if self.terminal:
            return
        self._cancel_under(self.root, now, "timeout" if deadline_hit else "cancelled",
                           "message deadline" if deadline_hit else "message finished")
        if self.root.delivered or self.delivered_at is not None:
            self.status = "delivered"
        elif deadline_hit:
            self.status = "expired"
        else:
            self.status = "undeliverable"
        self.finished_at = now
        if self._wants(FINISHED):
            self._emit(FINISHED, now, status=self.status)
        self._out.append(_tnew(Finish, (self.status, now, self.delivered_at)))

