"""The SimPy driver of the routing engine.

Exactly what the daemon's runtime does, on a simulated clock: one `daemon.core.engine.Delivery`
per message and one `HealthTracker` shared by the whole run; the driver only executes the
engine's commands:

    StartAttempt   draw the provider's answer (daemon.core.behaviour.draw_answer, with the outage
                   in force at that moment) and schedule it on the SimPy clock; a "hang" never
                   answers. A 2xx from a confirm = "receipt" provider schedules its receipt.
    CancelAttempt  forget the attempt: its answer (and receipt), if any comes, is dropped.
    SetTimer       one wake-up per delivery; a newer SetTimer makes older ones stale
                   (generation counter), and a stale one is ignored when it fires.
    RecordEvent    fed to the metrics and to the independent hierarchy checker.
    Finish         the message is terminal.

Attempts are scheduled as plain SimPy timeouts with a callback rather than one generator
process each: same semantics, a fraction of the cost. Arrivals are one SimPy process (Poisson,
until the scenario's duration); the run then goes on until the event queue is empty, so every
message reaches a terminal state. Three seeded random streams (traffic, each provider, the
engine's back-off jitter) make the same seed give the same report.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Callable

import simpy

from daemon.core.behaviour import Answer
from daemon.core.engine import (CancelAttempt, Command, Delivery, Finish, Outcome, RecordEvent,
                                SetTimer, StartAttempt)
from daemon.core.health import HealthTracker

from .invariants import HierarchyChecker
from .metrics import Metrics
from .setup import RunSetup

STANDARD_FIELDS = ("user_id", "email", "phone_number")

Progress = Callable[[float], None]


class Recipient(Mapping[str, str]):
    """A synthetic recipient: every contact field is present except the `absent` ones."""

    __slots__ = ("absent", "fields")

    def __init__(self, fields: tuple[str, ...], absent: frozenset[str]) -> None:
        self.fields = fields
        self.absent = absent

    def __getitem__(self, key: str) -> str:
        if key in self.absent:
            raise KeyError(key)
        return f"sim-{key}"

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return default if key in self.absent else f"sim-{key}"

    def __iter__(self) -> Iterator[str]:
        return (f for f in self.fields if f not in self.absent)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Msg:
    __slots__ = ("i", "d", "gen")

    def __init__(self, i: int, d: Delivery) -> None:
        self.i = i
        self.d = d
        self.gen = 0


@dataclass
class RunResult:
    setup: RunSetup
    metrics: Metrics
    checker: HierarchyChecker
    pending: int            # messages that never reached a terminal state (should be 0)
    sim_end_s: float
    wall_s: float


def run(setup: RunSetup, progress: Progress | None = None) -> RunResult:
    """Simulate one scenario against one routing file."""
    wall0 = time.perf_counter()
    sc = setup.scenario.model
    seed = setup.seed
    env = simpy.Environment()
    providers = setup.providers()
    traffic = random.Random(f"{seed}:traffic")
    jitter = random.Random(f"{seed}:engine")
    health = HealthTracker()
    metrics = Metrics(list(providers))
    checker = HierarchyChecker(setup.plans)
    duration = sc.duration / 1000.0
    rate = float(sc.traffic.rate)

    routes = [r for r, _ in setup.route_mix]
    cum = list(accumulate(w for _, w in setup.route_mix))
    plans = [setup.plans[r] for r in routes]
    shares = sorted((f, s) for f, s in sc.traffic.recipients.items() if s < 1.0)
    fields = tuple(dict.fromkeys((*STANDARD_FIELDS, *sorted(sc.traffic.recipients))))
    recipients: dict[frozenset[str], Recipient] = {}

    live: dict[str, _Msg] = {}      # attempts the driver is running
    state = {"pending": 0}
    now_of = lambda: env.now  # noqa: E731

    def schedule(delay: float, fn: Callable[[Any], None]) -> None:
        env.timeout(delay).callbacks.append(fn)  # type: ignore[union-attr]

    def execute(msg: _Msg, cmds: list[Command]) -> None:
        for c in cmds:
            t = type(c)
            if t is RecordEvent:
                ev = c.event  # type: ignore[union-attr]
                metrics.event(msg.i, ev)
                checker.on_event(msg.i, ev)
            elif t is StartAttempt:
                start_attempt(msg, c)  # type: ignore[arg-type]
            elif t is SetTimer:
                set_timer(msg, c.at)  # type: ignore[union-attr]
            elif t is CancelAttempt:
                if live.pop(c.attempt_id, None) is not None:  # type: ignore[union-attr]
                    checker.on_attempt_stopped(c.attempt_id, env.now)  # type: ignore[union-attr]
            elif t is Finish:
                metrics.finish(msg.i, c)  # type: ignore[arg-type]
                state["pending"] -= 1

    def start_attempt(msg: _Msg, c: StartAttempt) -> None:
        receipt = c.confirm == "receipt"
        ans = providers[c.provider].answer(env.now, receipt)
        live[c.attempt_id] = msg
        checker.on_attempt_started(msg.i, c)
        if ans.kind == "hang":
            return
        aid = c.attempt_id
        schedule(ans.delay_s, lambda _e: answered(msg, aid, ans))

    def answered(msg: _Msg, aid: str, ans: Answer) -> None:
        if live.pop(aid, None) is None:
            return                       # cancelled meanwhile: the answer no longer counts
        now = env.now
        checker.on_attempt_stopped(aid, now)
        if ans.kind == "refused":
            outcome = Outcome(network=True, detail="connection refused")
        else:
            outcome = Outcome(status=ans.status, retry_after_s=ans.retry_after_s)
        execute(msg, msg.d.on_outcome(aid, outcome, now))
        if ans.receipt_delay_s is not None:
            schedule(ans.receipt_delay_s, lambda _e: execute(msg, msg.d.on_receipt(aid, "delivered", env.now)))

    def set_timer(msg: _Msg, at: float | None) -> None:
        msg.gen += 1
        if at is None:
            return
        gen = msg.gen

        def fire(_e: Any) -> None:
            if msg.gen == gen:
                # never hand the engine a time before the one it asked for (float rounding)
                execute(msg, msg.d.on_timer(max(env.now, at)))
        schedule(max(0.0, at - env.now), fire)

    def recipient() -> Recipient:
        absent = frozenset(f for f, s in shares if traffic.random() >= s)
        r = recipients.get(absent)
        if r is None:
            r = recipients[absent] = Recipient(fields, absent)
        return r

    def arrivals() -> Any:
        i = 0
        while True:
            gap = traffic.expovariate(rate)
            if env.now + gap >= duration:
                return
            yield env.timeout(gap)
            k = 0 if len(cum) == 1 else min(bisect_right(cum, traffic.random()), len(cum) - 1)
            rec = recipient()
            now = env.now
            msg = _Msg(i, Delivery(f"m{i}", plans[k], rec, now, jitter, health))
            metrics.accept(i, now, routes[k])
            state["pending"] += 1
            execute(msg, msg.d.start(now))
            i += 1
            if progress is not None and i % 2000 == 0:
                progress(min(now / duration, 1.0))

    env.process(arrivals())
    env.run()
    end = now_of()
    checker.finish_run(end)
    if progress is not None:
        progress(1.0)
    return RunResult(setup, metrics, checker, state["pending"], end, time.perf_counter() - wall0)
