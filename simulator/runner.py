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

Arrivals, attempts, receipts and wake-ups are all plain SimPy timeouts with a callback rather
than generator processes (one callback per kind; what it needs rides on the timeout as its
value): same semantics and event order, a fraction of the cost. Arrivals are Poisson until the
scenario's duration, each arrival scheduling the next; the run then goes on until the event
queue is empty, so every message reaches a terminal state. Seeded random streams (traffic, each
provider, the engine's back-off jitter, the commit delays) make the same seed give the same report.

Over ~400 lines for one reason: `run` is one function whose handlers are closures over the run's
locals (bound methods and tables looked up once, no attribute access per event: the simulator's
speed, docs/performance.md), so it is kept whole; what it uses is elsewhere (traffic.py the
recipients, readers.py the readers' fan-out, result.py RunResult, metrics.py, invariants.py).
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from itertools import accumulate
from typing import Any, Callable

import simpy

from ..daemon.core.behaviour import sample_latency_s
from ..daemon.core.engine import (CancelAttempt, Command, Delivery, Event, Finish, Outcome, SetTimer,
                                StartAttempt)
from ..daemon.core.behaviour import LatencyDist
from ..daemon.core.fleet import Fleet

from .invariants import HierarchyChecker
from .metrics import Metrics
from .readers import _both, event_sinks
from .result import RunResult, outage_windows
from .setup import RunSetup
from .trace import Trace
from .traffic import STANDARD_FIELDS, Recipient

# the recipients, the readers' fan-out and the result are modules of their own (traffic.py,
# readers.py, result.py); their names stay importable from here
__all__ = ["STANDARD_FIELDS", "Progress", "Recipient", "RunResult", "event_sinks", "outage_windows", "run"]

Progress = Callable[[float], None]


class _Msg:
    """The driver's side of one message: its engine (`delivery`) and its one wake-up.

    gen     generation of the wanted wake-up: a scheduled one of an older generation is stale
    due     the SimPy time of a wanted wake-up held back, not scheduled yet (None: none held)
    at      the time the engine asked for with it
    anchor  the SimPy time of an answer or receipt of this message already on the queue, earlier
            than `due`, whose handling schedules `due` (None: none known)
    """

    __slots__ = ("i", "delivery", "gen", "due", "at", "anchor")

    def __init__(self, i: int, d: Delivery) -> None:
        self.i = i
        self.delivery = d
        self.gen = 0
        self.due: float | None = None
        self.at = 0.0
        self.anchor: float | None = None


def _delay_to(now: float, t: float) -> float:
    """A delay d >= 0 with now + d == t exactly (t - now alone can miss t by an ulp)."""
    d = t - now
    for _ in range(64):
        s = now + d
        if s == t:
            return d
        d = math.nextafter(d, math.inf if s < t else -math.inf)
    return t - now      # pragma: no cover - within an ulp or two in practice


# an attempt's answer as it rides on its SimPy timeout: (message, attempt id, then the provider's
# draw less its delay: kind, status, retry_after, receipt delay)
_Answer = tuple[_Msg, str, str, int | None, float | None, float | None]


def run(setup: RunSetup, progress: Progress | None = None, *, hold_wakeups: bool = True,
        cut_inflight: bool | None = None, commit_delay: LatencyDist | None = None,
        trace: bool = False) -> RunResult:
    """Simulate one scenario against one routing file.

    hold_wakeups=False schedules every wake-up at once (see set_timer): the same run, slower.
    cut_inflight overrides the scenario's [simulation] cut_inflight_on_breaker_open, commit_delay
    its commit_delay (`simulate --live` passes the one it measured). trace=True also keeps every
    message and attempt (RunResult.trace: the plot, the tests); memory then grows with the run."""
    wall0 = time.perf_counter()
    sc = setup.scenario.model
    seed = setup.seed
    env = simpy.Environment()
    timeout = env.timeout
    providers = setup.providers()
    draw_of = {name: p.draw for name, p in providers.items()}
    traffic = random.Random(f"{seed}:traffic")
    jitter = random.Random(f"{seed}:engine")
    metrics = Metrics(list(providers), outage_windows(setup))
    tracer = Trace(list(providers)) if trace else None
    checker = HierarchyChecker(setup.plans)
    duration = sc.duration / 1000.0
    next_gap = sc.traffic.gaps(traffic)     # Poisson arrivals at the rate of the time ([[traffic.bursts]])

    routes = [r for r, _ in setup.route_mix]
    cum = list(accumulate(w for _, w in setup.route_mix))
    plans = [setup.plans[r] for r in routes]
    shares = sorted((f, s) for f, s in sc.traffic.recipients.items() if s < 1.0)
    fields = tuple(dict.fromkeys((*STANDARD_FIELDS, *sorted(sc.traffic.recipients))))
    recipients: dict[frozenset[str], Recipient] = {}
    everyone = Recipient(fields, frozenset())      # the recipient when every field is always present

    live: dict[str, _Msg] = {}      # attempts the driver is running
    held_until = 0.0                # the latest wake-up ever held back (see set_timer)
    live_pop = live.pop
    pending = 0
    cut = sc.simulation.cut_inflight_on_breaker_open if cut_inflight is None else cut_inflight
    # the breakers, the pending set and the cut-over (daemon/core/fleet.py); the pending set is
    # kept only when cutting (nothing else here reads it)
    fleet: Fleet[_Msg] = Fleet(cut_inflight=cut)
    health = fleet.health
    # routingd's own outbound limits from the routing file (daemon/core/limiter.py), the same
    # decisions as the daemon's; the vendor's limit is the scenario's behaviour `rate_limit`
    limiter = fleet.limiter
    limiter.configure({n: lim for n, p in setup.policy.providers.items()
                       if (lim := p.outbound_limit()) is not None}, 0.0)
    limited = any(True for _ in limiter.providers())
    keep_pending = cut or limited       # the fleet's dispatch finds messages in its pending set
    priorities = [setup.policy.routes[r].priority if r in setup.policy.routes else 0 for r, _ in setup.route_mix]
    limiter_at: list[float] = []        # the limiter wake-ups scheduled (at most a few at once)
    opened = fleet.opened
    cut_over = fleet.cut_over
    wake_time = fleet.wake_time

    sinks = event_sinks(metrics.handlers, checker.handlers, *((tracer.handlers,) if tracer else ()))
    sink_of = sinks.get
    wanted = frozenset(sinks)       # the engine builds only the events something here reads
    # what the driver knows from its own commands it hands the readers itself
    metrics_accept, checker_accept = metrics.accept, checker.on_accept
    metrics_attempt, checker_attempt = metrics.start_attempt, checker.on_attempt_started
    metrics_finish, checker_finish = metrics.finish, checker.on_finish
    attempt_stopped = checker.on_attempt_stopped
    if tracer is not None:      # the trace reads what the metrics read: one call for both
        metrics_accept = _both(metrics_accept, tracer.accept)
        metrics_attempt = _both(metrics_attempt, tracer.start_attempt)
        metrics_finish = _both(metrics_finish, tracer.finish)
    refused = Outcome(network=True, detail="connection refused")
    commit_median, commit_sigma = (sc.simulation.commit_delay if commit_delay is None else commit_delay).fit
    store_rng = random.Random(f"{seed}:store")
    gauss = store_rng.gauss
    outcome_of: dict[int | None, Outcome] = {}     # plain answers by status (Outcome is immutable)

    def execute(msg: _Msg, cmds: list[Command]) -> None:
        i = msg.i
        for c in cmds:
            t = type(c)
            if t is Event:                          # events first: no dispatch through handler_of for them
                sink = sink_of(c[0])  # type: ignore[arg-type]  # an Event is its own RecordEvent; [0] is its type
                if sink is not None:
                    sink(i, c)  # type: ignore[arg-type]
            else:
                handler_of[t](msg, c)
        if opened:
            cut_over(env.now, execute)
        if limited and limiter.waiting:
            dispatch()

    def dispatch() -> None:
        """Hand queued runs their turn (Fleet.dispatch) and schedule the limiter's next one."""
        now = env.now
        fleet.dispatch(now, execute)
        nxt = limiter.next_at(now)
        if nxt is not None and (not limiter_at or nxt < min(limiter_at)):
            limiter_at.append(nxt)
            timeout(_delay_to(now, nxt), nxt).callbacks.append(limiter_due)  # type: ignore[union-attr]

    def limiter_due(e: Any) -> None:
        limiter_at.remove(e.value)
        dispatch()

    def call_ended(msg: _Msg, aid: str) -> None:
        """A call on a rate-limited provider ended: its place in flight is free."""
        rec = msg.delivery.attempts.get(aid)
        if rec is not None and limiter.limited(rec.provider):
            limiter.release(rec.provider)

    def start_attempt(msg: _Msg, c: StartAttempt) -> None:
        aid = c.attempt_id
        live[aid] = msg
        i = msg.i
        metrics_attempt(i, c)
        checker_attempt(i, c)
        if commit_median > 0.0:
            # the call goes out once the attempt's row is committed (see the module docstring)
            wait = commit_median if commit_sigma is None else commit_median * math.exp(commit_sigma * gauss(0.0, 1.0))
            timeout(wait, (msg, c)).callbacks.append(committed)  # type: ignore[union-attr]
            hold(msg, env.now + wait)
            return
        call(msg, c, env.now)

    def committed(e: Any) -> None:
        """An attempt's row is committed: its call goes out, unless it was cancelled meanwhile."""
        msg: _Msg
        c: StartAttempt
        msg, c = e.value
        now = env.now
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        if c.attempt_id in live:
            call(msg, c, now)
        if msg.due is not None:
            release(msg)

    def call(msg: _Msg, c: StartAttempt, now: float) -> None:
        """The provider sees attempt `c` at `now`: draw its answer and put it on the queue."""
        aid = c.attempt_id
        kind, delay, status, retry_after, receipt = draw_of[c.provider](now, c.confirm == "receipt")
        if kind == "hang":
            return
        # what answered needs rides on the timeout as its value: no closure per attempt
        answer: _Answer = (msg, aid, kind, status, retry_after, receipt)
        timeout(delay, answer).callbacks.append(answered)  # type: ignore[union-attr]
        t = now + delay                 # hold(msg, t), inlined: once per attempt
        anchor = msg.anchor
        if anchor is None or t < anchor:
            msg.anchor = t

    def answered(e: Any) -> None:
        """An attempt's answer comes: hand it to the engine unless the attempt was cancelled."""
        answer: _Answer = e.value
        msg, aid, kind, status, retry_after, receipt = answer
        now = env.now
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        if live_pop(aid, None) is not None:     # else cancelled meanwhile: the answer no longer counts
            attempt_stopped(aid, now)
            if limited:
                call_ended(msg, aid)
            if kind == "refused":
                outcome = refused
            elif retry_after is None:
                outcome = outcome_of.get(status)  # type: ignore[assignment]
                if outcome is None:
                    outcome = outcome_of[status] = Outcome(status=status)
            else:
                outcome = Outcome(status=status, retry_after_s=retry_after)
            execute(msg, msg.delivery.on_outcome(aid, outcome, now))
            if receipt is not None:
                timeout(receipt, (msg, aid)).callbacks.append(receipted)  # type: ignore[union-attr]
                hold(msg, now + receipt)
        if msg.due is not None:
            release(msg)

    def receipted(e: Any) -> None:
        receipt: tuple[_Msg, str] = e.value         # (message, attempt id)
        msg, aid = receipt
        now = env.now
        anchor = msg.anchor
        if anchor is not None and anchor <= now:
            msg.anchor = None
        execute(msg, msg.delivery.on_receipt(aid, "delivered", now))
        if msg.due is not None:
            release(msg)

    def hold(msg: _Msg, t: float) -> None:
        """An answer or receipt of `msg` is on the queue for SimPy time `t`."""
        anchor = msg.anchor
        if anchor is None or t < anchor:
            msg.anchor = t

    def release(msg: _Msg) -> None:
        """Schedule the held-back wake-up once no earlier answer or receipt will do it."""
        anchor = msg.anchor
        due = msg.due
        if anchor is None or anchor >= due:  # type: ignore[operator]
            msg.due = None
            wake(msg, _delay_to(env.now, due), msg.at)  # type: ignore[arg-type]

    def cancel_attempt(msg: _Msg, c: CancelAttempt) -> None:
        if live_pop(c.attempt_id, None) is not None:
            attempt_stopped(c.attempt_id, env.now)
            if limited:
                call_ended(msg, c.attempt_id)

    def set_timer(msg: _Msg, c: SetTimer) -> None:
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
        now = env.now
        delay = at - now
        if delay < 0.0:
            delay = 0.0
        anchor = msg.anchor
        if hold_wakeups and anchor is not None and anchor < now + delay:
            due = msg.due = now + delay
            msg.at = at
            nonlocal held_until
            if due > held_until:
                held_until = due
            return
        msg.due = None
        wake(msg, delay, at)

    def wake(msg: _Msg, delay: float, at: float) -> None:
        timeout(delay, (msg, msg.gen, at)).callbacks.append(fire)  # type: ignore[union-attr]

    def fire(e: Any) -> None:
        wakeup: tuple[_Msg, int, float] = e.value   # (message, generation, the time asked for)
        msg, gen, at = wakeup
        if msg.gen == gen:
            execute(msg, msg.delivery.on_timer(wake_time(env.now, at)))

    def finish(msg: _Msg, c: Finish) -> None:
        nonlocal pending
        i = msg.i
        metrics_finish(i, c)
        checker_finish(i, c)
        pending -= 1
        if keep_pending:
            fleet.finished(i)

    handler_of: dict[type, Callable[[_Msg, Any], None]] = {
        StartAttempt: start_attempt, SetTimer: set_timer, CancelAttempt: cancel_attempt, Finish: finish}

    cancel_share = sc.traffic.cancel
    cancel_after = sc.traffic.cancel_after
    cancels = random.Random(f"{seed}:cancel")

    def client_cancels(e: Any) -> None:
        msg: _Msg = e.value
        metrics.cancel_requested(msg.i, env.now)
        if tracer is not None:
            tracer.cancel_requested(msg.i, env.now)
        execute(msg, msg.delivery.cancel(env.now))

    def recipient() -> Recipient:
        """A recipient missing each field of `shares` with its odds (only called when there are some)."""
        absent = frozenset(f for f, s in shares if traffic.random() >= s)
        r = recipients.get(absent)
        if r is None:
            r = recipients[absent] = Recipient(fields, absent)
        return r

    one_route = len(cum) == 1
    last_route = len(cum) - 1
    count = 0

    def next_arrival() -> None:
        """Poisson arrivals until the scenario's duration: each one schedules the next."""
        gap = next_gap(env.now)
        if env.now + gap < duration:
            timeout(gap).callbacks.append(arrive)  # type: ignore[union-attr]

    def arrive(_e: Any) -> None:
        nonlocal pending, count
        i = count
        k = 0 if one_route else min(bisect_right(cum, traffic.random()), last_route)
        rec = recipient() if shares else everyone
        now = env.now
        msg = _Msg(i, Delivery(f"m{i}", plans[k], rec, now, jitter, health, events=wanted,
                               limiter=limiter if limited else None, priority=priorities[k]))
        route = routes[k]
        metrics_accept(i, now, route)
        checker_accept(i, route, now)
        pending += 1
        if keep_pending:
            fleet.admit(i, msg)
        execute(msg, msg.delivery.start(now))
        if cancel_share and cancels.random() < cancel_share:
            timeout(sample_latency_s(cancel_after, cancels), msg).callbacks.append(  # type: ignore[arg-type,union-attr]
                client_cancels)
        count = i + 1
        if progress is not None and count % 2000 == 0:
            progress(min(now / duration, 1.0))
        gap = next_gap(now)                 # next_arrival(), inlined: once per message
        if now + gap < duration:
            timeout(gap).callbacks.append(arrive)  # type: ignore[union-attr]

    next_arrival()
    env.run()
    # the run ends with its last event, a held-back wake-up included (it would have fired, if
    # only to be ignored): so the end does not depend on which ones were held back
    end = max(env.now, held_until)
    checker.finish_run(end)
    metrics.close()
    if progress is not None:
        progress(1.0)
    return RunResult(setup, metrics, checker, pending, end, time.perf_counter() - wall0, tracer)
