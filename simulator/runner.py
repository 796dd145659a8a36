"""The SimPy driver of the routing engine.

Exactly what the daemon's runtime does, on a simulated clock: one `routingd.daemon.core.engine.Delivery`
per message, and the core's `Fleet` (daemon/core/fleet.py) for the rules that span messages --
the breakers shared by the whole run, the pending set, the breaker cut-over and the early-timer
clamp -- the very object the daemon uses; the driver only executes the engine's commands. It also tells the run's two readers, the metrics and the independent
hierarchy checker, what it knows itself: each accept, StartAttempt and Finish.

    StartAttempt   after the store's commit delay ([simulation] commit_delay: the daemon commits
                   the attempt's row before the call goes out, docs/simulator.md "Simulated vs
                   live"), draw the provider's answer (routingd.daemon.core.behaviour.draw, with
                   the outage in force at that moment) and schedule it on the SimPy clock; a
                   "hang" never answers; an attempt cancelled before its commit is never called.
                   A 2xx from a confirm = "receipt" provider schedules its receipt. (The metrics
                   open the attempt's row, the checker checks its deadline, both at StartAttempt.)
    CancelAttempt  forget the attempt: its answer (and receipt), if any comes, is dropped.
    SetTimer       one wake-up per delivery; a newer SetTimer makes older ones stale
                   (generation counter), and a stale one is ignored when it fires. One that an
                   already queued answer of the same message comes before is held back until
                   that answer is handled (see set_timer): most are dropped by then.
    RecordEvent    fed to the readers. The engine builds only the event types they read (its
                   `events` filter), not the ones that say what the driver already knows:
                   `started` (the accept), `attempt_started` (StartAttempt), `finished` (Finish).
                   When a breaker opened in the batch, the Fleet's cut-over runs once it is
                   applied (attempts in flight on that provider fail over at once) - unless the
                   scenario sets [simulation] cut_inflight_on_breaker_open = false.
    Finish         the message is terminal.

A scenario's `[traffic] cancel` share of messages is cancelled by the client `cancel_after` their
accept: the driver calls Delivery.cancel(now) then, as the daemon's cancel endpoint does (a no-op
on a message that finished before). Which ones, and when, comes from a fourth stream of its own,
so the arrivals are the same with and without cancels.

Arrivals, attempts, receipts and wake-ups are SimPy events with a callback rather than generator
processes (one handler per kind): same semantics and event order, a fraction of the cost. Each is
a `Due` put on SimPy's queue with its public Environment.schedule(event, NORMAL, delay), which
is what a Timeout does with itself: so the same times, the same tie-breaking order and the same
reports as `env.timeout(delay, value)`, without a Timeout's Python-level constructor; what the
handler needs rides on the `Due`, its own SimPy time included (`at`, computed as SimPy computes
it), so no handler reads `env.now`. Of an event SimPy's step() reads only `callbacks` (a tuple
here: the one handler of the kind, shared) and `_ok`; tests/test_simulator_compiled.py holds
SimPy to that. Arrivals are Poisson until the scenario's duration, each arrival scheduling the
next; the run then goes on until the event queue is empty, so every message reaches a terminal
state. Seeded random streams (traffic, each provider, the engine's back-off jitter, the commit
delays) make the same seed give the same report.

Compiled (setup.py, like the core; docs/performance.md "Simulator: a day of traffic"): the run
is one `_Driver` whose handlers are methods, so that one calls the next, the engine, the metrics
and the checker as native calls, with typed attributes instead of a closure's cells. The driver
is kept whole for that reason; what it uses is elsewhere (happenings.py the events it schedules
and its side of a message, draws.py the compiled draws, traffic.py the recipients, readers.py
the readers' fan-out, result.py RunResult, metrics.py, invariants.py).
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from itertools import accumulate
from typing import Any, Callable

import simpy
from simpy.core import NORMAL, EmptySchedule

from ..daemon.core.behaviour import LatencyDist, sample_latency_s
from ..daemon.core.engine import (CancelAttempt, Command, Delivery, Event, Finish, Outcome, SetTimer,
                                StartAttempt)
from ..daemon.core.fleet import Fleet

from .draws import Exponential, Gauss
from .happenings import Due, Msg, delay_to
from .invariants import HierarchyChecker
from .metrics import Metrics
from .providers import SimProvider
from .readers import event_sinks
from .result import RunResult, outage_windows
from .setup import RunSetup
from .trace import Trace
from .traffic import STANDARD_FIELDS, Recipient

# the recipients, the readers' fan-out and the result are modules of their own (traffic.py,
# readers.py, result.py); their names stay importable from here
__all__ = ["STANDARD_FIELDS", "Progress", "Recipient", "RunResult", "event_sinks", "outage_windows", "run"]

Progress = Callable[[float], None]


def run(setup: RunSetup, progress: Progress | None = None, *, hold_wakeups: bool = True,
        cut_inflight: bool | None = None, commit_delay: LatencyDist | None = None,
        trace: bool = False) -> RunResult:
    """Simulate one scenario against one routing file.

    hold_wakeups=False schedules every wake-up at once (see _Driver.set_timer): the same run, slower.
    cut_inflight overrides the scenario's [simulation] cut_inflight_on_breaker_open, commit_delay
    its commit_delay (`simulate --live` passes the one it measured). trace=True also keeps every
    message and attempt (RunResult.trace: the plot, the tests); memory then grows with the run."""
    return _Driver(setup, progress, hold_wakeups, cut_inflight, commit_delay, trace).run()


class _Driver:
    """One run: the SimPy environment, the fleet, the readers, and a handler per kind of
    happening (each a method: compiled, one calls the next directly, see the module docstring)."""

    def __init__(self, setup: RunSetup, progress: Progress | None, hold_wakeups: bool,
                 cut_inflight: bool | None, commit_delay: LatencyDist | None, trace: bool) -> None:
        self.wall0 = time.perf_counter()
        self.setup = setup
        self.progress = progress
        self.hold_wakeups = hold_wakeups
        sc = setup.scenario.model
        seed = setup.seed
        self.env = env = simpy.Environment()
        self.schedule: Callable[[Due, int, float], None] = env.schedule   # type: ignore[assignment]
        self.now = 0.0      # SimPy's time: the `at` of the happening being handled
        self.providers: dict[str, SimProvider] = setup.providers()
        providers = self.providers
        self.traffic = random.Random(f"{seed}:traffic")
        self.jitter = random.Random(f"{seed}:engine")
        self.metrics = Metrics(list(providers), outage_windows(setup))
        self.tracer: Trace | None = Trace(list(providers)) if trace else None
        self.checker = HierarchyChecker(setup.plans)
        self.duration: float = sc.duration / 1000.0
        # Poisson arrivals at the rate of the time ([[traffic.bursts]]); at one rate, the same
        # draws compiled (see Exponential)
        self.next_gap: Callable[[float], float] = sc.traffic.gaps(self.traffic)
        self.gap: Exponential | None = None if sc.traffic.bursts else Exponential(self.traffic,
                                                                                   float(sc.traffic.rate))

        self.routes = [r for r, _ in setup.route_mix]
        self.cum = list(accumulate(w for _, w in setup.route_mix))
        self.plans = [setup.plans[r] for r in self.routes]
        self.shares = sorted((f, s) for f, s in sc.traffic.recipients.items() if s < 1.0)
        self.fields = tuple(dict.fromkeys((*STANDARD_FIELDS, *sorted(sc.traffic.recipients))))
        self.recipients: dict[frozenset[str], Recipient] = {}
        self.everyone = Recipient(self.fields, frozenset())   # the recipient when every field is always present

        self.live: dict[str, Msg] = {}     # attempts the driver is running
        self.held_until = 0.0               # the latest wake-up ever held back (see set_timer)
        self.pending = 0
        self.count = 0
        cut = sc.simulation.cut_inflight_on_breaker_open if cut_inflight is None else cut_inflight
        # the breakers, the pending set and the cut-over (daemon/core/fleet.py); the pending set is
        # kept only when cutting (nothing else here reads it)
        self.fleet: Fleet[Msg] = Fleet(cut_inflight=cut)
        self.health = self.fleet.health
        # routingd's own outbound limits from the routing file (daemon/core/limiter.py), the same
        # decisions as the daemon's; the vendor's limit is the scenario's behaviour `rate_limit`
        self.limiter = limiter = self.fleet.limiter
        limiter.configure({n: lim for n, p in setup.policy.providers.items()
                           if (lim := p.outbound_limit()) is not None}, 0.0)
        self.limited = any(True for _ in limiter.providers())
        self.keep_pending = cut or self.limited     # the fleet's dispatch finds messages in its pending set
        self.priorities = [setup.policy.routes[r].priority if r in setup.policy.routes else 0
                           for r, _ in setup.route_mix]
        self.limiter_at: list[float] = []   # the limiter wake-ups scheduled (at most a few at once)
        self.opened = self.fleet.opened

        sinks = event_sinks(self.metrics.handlers, self.checker.handlers,
                            *((self.tracer.handlers,) if self.tracer is not None else ()))
        self.sinks = sinks
        self.wanted = frozenset(sinks)      # the engine builds only the events something here reads
        self.refused = Outcome(network=True, detail="connection refused")
        self.commit_median, self.commit_sigma = (sc.simulation.commit_delay if commit_delay is None
                                                 else commit_delay).fit
        self.normal = Gauss(random.Random(f"{seed}:store"))     # the commit delays' stream
        self.outcome_of: dict[int | None, Outcome] = {}    # plain answers by status (Outcome is immutable)
        self.cancel_share: float = sc.traffic.cancel
        self.cancel_after: LatencyDist | None = sc.traffic.cancel_after
        self.cancels = random.Random(f"{seed}:cancel")
        self.one_route = len(self.cum) == 1
        self.last_route = len(self.cum) - 1
        # the handlers SimPy calls, bound once (a bound method is an object of its own)
        self.on_arrive: tuple[Callable[[Any], None]] = (self.arrive,)
        self.on_committed: tuple[Callable[[Any], None]] = (self.committed,)
        self.on_answered: tuple[Callable[[Any], None]] = (self.answered,)
        self.on_receipted: tuple[Callable[[Any], None]] = (self.receipted,)
        self.on_fire: tuple[Callable[[Any], None]] = (self.fire,)
        self.on_limiter_due: tuple[Callable[[Any], None]] = (self.limiter_due,)
        self.on_client_cancels: tuple[Callable[[Any], None]] = (self.client_cancels,)
        self.on_execute: Callable[[Msg, list[Command]], None] = self.execute

    def run(self) -> RunResult:
        env = self.env
        self.next_arrival()
        step = env.step     # = env.run() (no `until`), the loop compiled
        try:
            while True:
                step()
        except EmptySchedule:
            pass
        # the run ends with its last event, a held-back wake-up included (it would have fired, if
        # only to be ignored): so the end does not depend on which ones were held back
        end = max(env.now, self.held_until)
        self.checker.finish_run(end)
        self.metrics.close()
        if self.progress is not None:
            self.progress(1.0)
        return RunResult(self.setup, self.metrics, self.checker, self.pending, end,
                         time.perf_counter() - self.wall0, self.tracer)

    # ---------------------------------------------------------------- the engine's commands

    def execute(self, msg: Msg, cmds: list[Command]) -> None:
        i = msg.i
        for c in cmds:
            if type(c) is Event:        # an Event is its own RecordEvent; [0] is its type
                sink = self.sinks.get(c[0])
                if sink is not None:
                    sink(i, c)
            elif type(c) is StartAttempt:
                self.start_attempt(msg, c)
            elif type(c) is SetTimer:
                self.set_timer(msg, c)
            elif type(c) is CancelAttempt:
                self.cancel_attempt(msg, c)
            elif type(c) is Finish:
                self.finish(msg, c)
            else:       # pragma: no cover - the engine's Command union is these five
                raise TypeError(f"unknown command {c!r}")
        if self.opened:
            self.fleet.cut_over(self.now, self.on_execute)
        if self.limited and self.limiter.waiting:
            self.dispatch()

    def dispatch(self) -> None:
        """Hand queued runs their turn (Fleet.dispatch) and schedule the limiter's next one."""
        now = self.now
        self.fleet.dispatch(now, self.on_execute)
        nxt = self.limiter.next_at(now)
        limiter_at = self.limiter_at
        if nxt is not None and (not limiter_at or nxt < min(limiter_at)):
            limiter_at.append(nxt)
            due = Due(self.on_limiter_due, None)
            due.asked = nxt
            self.later(delay_to(now, nxt), due)

    def limiter_due(self, e: Due) -> None:
        self.now = e.at
        self.limiter_at.remove(e.asked)
        self.dispatch()

    def later(self, delay: float, due: Due) -> None:
        """Put `due` on SimPy's queue `delay` from now (its `at` as SimPy computes it)."""
        due.at = self.now + delay
        self.schedule(due, NORMAL, delay)

    def call_ended(self, msg: Msg, aid: str) -> None:
        """A call on a rate-limited provider ended: its place in flight is free."""
        rec = msg.delivery.attempts.get(aid)
        if rec is not None and self.limiter.limited(rec.provider):
            self.limiter.release(rec.provider)

    def start_attempt(self, msg: Msg, c: StartAttempt) -> None:
        self.live[c.attempt_id] = msg
        i = msg.i
        self.metrics.start_attempt(i, c)
        if self.tracer is not None:
            self.tracer.start_attempt(i, c)
        self.checker.on_attempt_started(i, c)
        median = self.commit_median
        if median > 0.0:
            # the call goes out once the attempt's row is committed (see the module docstring)
            sigma = self.commit_sigma
            wait = median if sigma is None else median * math.exp(sigma * self.normal.draw())
            due = Due(self.on_committed, msg)
            due.cmd = c
            self.later(wait, due)
            self.hold(msg, self.now + wait)
            return
        self.call(msg, c, self.now)

    def committed(self, e: Due) -> None:
        """An attempt's row is committed: its call goes out, unless it was cancelled meanwhile."""
        msg = e.msg
        c = e.cmd
        assert msg is not None and c is not None
        self.now = now = e.at
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        if c.attempt_id in self.live:
            self.call(msg, c, now)
        if msg.due is not None:
            self.release(msg)

    def call(self, msg: Msg, c: StartAttempt, now: float) -> None:
        """The provider sees attempt `c` at `now`: draw its answer and put it on the queue."""
        kind, delay, status, retry_after, receipt = self.providers[c.provider].draw(now, c.confirm == "receipt")
        if kind == "hang":
            return
        due = Due(self.on_answered, msg)
        due.aid = c.attempt_id
        due.kind = kind
        due.status = status
        due.retry_after = retry_after
        due.receipt = receipt
        self.later(delay, due)
        self.hold(msg, now + delay)

    def answered(self, e: Due) -> None:
        """An attempt's answer comes: hand it to the engine unless the attempt was cancelled."""
        msg = e.msg
        assert msg is not None
        aid, kind, status, retry_after, receipt = e.aid, e.kind, e.status, e.retry_after, e.receipt
        self.now = now = e.at
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        if self.live.pop(aid, None) is not None:     # else cancelled meanwhile: the answer no longer counts
            self.checker.on_attempt_stopped(aid, now)
            if self.limited:
                self.call_ended(msg, aid)
            outcome: Outcome
            if kind == "refused":
                outcome = self.refused
            elif retry_after is None:
                o = self.outcome_of.get(status)
                if o is None:
                    o = self.outcome_of[status] = Outcome(status=status)
                outcome = o
            else:
                outcome = Outcome(status=status, retry_after_s=retry_after)
            self.execute(msg, msg.delivery.on_outcome(aid, outcome, now))
            if receipt is not None:
                due = Due(self.on_receipted, msg)
                due.aid = aid
                self.later(receipt, due)
                self.hold(msg, now + receipt)
        if msg.due is not None:
            self.release(msg)

    def receipted(self, e: Due) -> None:
        msg, aid = e.msg, e.aid
        assert msg is not None
        self.now = now = e.at
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        self.execute(msg, msg.delivery.on_receipt(aid, "delivered", now))
        if msg.due is not None:
            self.release(msg)

    def hold(self, msg: Msg, t: float) -> None:
        """An answer or receipt of `msg` is on the queue for SimPy time `t`."""
        anchor = msg.anchor
        if anchor is None or t < anchor:
            msg.anchor = t

    def release(self, msg: Msg) -> None:
        """Schedule the held-back wake-up once no earlier answer or receipt will do it."""
        anchor = msg.anchor
        due = msg.due
        assert due is not None
        if anchor is None or anchor >= due:
            msg.due = None
            self.wake(msg, delay_to(self.now, due), msg.at)

    def cancel_attempt(self, msg: Msg, c: CancelAttempt) -> None:
        if self.live.pop(c.attempt_id, None) is not None:
            self.checker.on_attempt_stopped(c.attempt_id, self.now)
            if self.limited:
                self.call_ended(msg, c.attempt_id)

    def set_timer(self, msg: Msg, c: SetTimer) -> None:
        """One wake-up per message. Most are replaced before they come due (an attempt's deadline,
        dropped when its answer comes), so one that comes after an answer or receipt of the same
        message already on the queue is held back until that has been handled: by then it has
        usually been replaced or dropped, and otherwise it is scheduled for the very SimPy time
        it would have had."""
        msg.gen += 1
        at = c.at
        if at is None:
            msg.due = None
            return
        now = self.now
        delay = at - now
        if delay < 0.0:
            delay = 0.0
        anchor = msg.anchor
        if self.hold_wakeups and anchor is not None and anchor < now + delay:
            due = msg.due = now + delay
            msg.at = at
            if due > self.held_until:
                self.held_until = due
            return
        msg.due = None
        self.wake(msg, delay, at)

    def wake(self, msg: Msg, delay: float, at: float) -> None:
        due = Due(self.on_fire, msg)
        due.gen = msg.gen
        due.asked = at
        self.later(delay, due)

    def fire(self, e: Due) -> None:
        msg = e.msg         # its generation and the time asked for ride on `e`
        assert msg is not None
        self.now = now = e.at
        if msg.gen == e.gen:
            self.execute(msg, msg.delivery.on_timer(self.fleet.wake_time(now, e.asked)))

    def finish(self, msg: Msg, c: Finish) -> None:
        i = msg.i
        self.metrics.finish(i, c)
        if self.tracer is not None:
            self.tracer.finish(i, c)
        self.checker.on_finish(i, c)
        self.pending -= 1
        if self.keep_pending:
            self.fleet.finished(i)

    # ---------------------------------------------------------------- the traffic

    def client_cancels(self, e: Due) -> None:
        msg = e.msg
        assert msg is not None
        self.now = now = e.at
        self.metrics.cancel_requested(msg.i, now)
        if self.tracer is not None:
            self.tracer.cancel_requested(msg.i, now)
        self.execute(msg, msg.delivery.cancel(now))

    def recipient(self) -> Recipient:
        """A recipient missing each field of `shares` with its odds (only called when there are some)."""
        traffic = self.traffic
        absent = frozenset(f for f, s in self.shares if traffic.random() >= s)
        r = self.recipients.get(absent)
        if r is None:
            r = self.recipients[absent] = Recipient(self.fields, absent)
        return r

    def next_arrival(self) -> None:
        """Poisson arrivals until the scenario's duration: each one schedules the next."""
        now = self.now
        gap = self.next_gap(now) if self.gap is None else self.gap.draw()
        if now + gap < self.duration:
            self.later(gap, Due(self.on_arrive, None))

    def arrive(self, e: Due) -> None:
        self.now = e.at
        i = self.count
        k = 0 if self.one_route else min(bisect_right(self.cum, self.traffic.random()), self.last_route)
        rec = self.recipient() if self.shares else self.everyone
        now = self.now
        msg = Msg(i, Delivery(f"m{i}", self.plans[k], rec, now, self.jitter, self.health, events=self.wanted,
                               limiter=self.limiter if self.limited else None, priority=self.priorities[k]))
        route = self.routes[k]
        self.metrics.accept(i, now, route)
        if self.tracer is not None:
            self.tracer.accept(i, now, route)
        self.checker.on_accept(i, route, now)
        self.pending += 1
        if self.keep_pending:
            self.fleet.admit(i, msg)
        self.execute(msg, msg.delivery.start(now))
        share = self.cancel_share
        if share and self.cancels.random() < share:
            assert self.cancel_after is not None     # set whenever [traffic] cancel is
            self.later(sample_latency_s(self.cancel_after, self.cancels), Due(self.on_client_cancels, msg))
        self.count = i + 1
        if self.progress is not None and self.count % 2000 == 0:
            self.progress(min(now / self.duration, 1.0))
        self.next_arrival()
