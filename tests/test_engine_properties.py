"""Hypothesis properties of the engine over random policies, recipients, outcomes and timings.

A small discrete-event driver runs 1-3 messages against one shared HealthTracker. It answers each
StartAttempt with a random outcome (2xx, 4xx, 5xx, 408, 429 with or without Retry-After, network
error, or no answer at all) at a random time - sometimes exactly at the attempt's deadline, to
hit ties - sends random receipts for receipt-confirmed providers (before or after the response,
delivered or failed, or none), keeps feeding answers of cancelled attempts (as a real driver
races), adds spurious early wake-ups, and calls on_timer at each SetTimer time - sometimes a
hair before it, as float rounding in a real driver does, and then relies on the engine to re-arm.
When a breaker opens it sometimes calls on_provider_unhealthy on every other message with an
attempt in flight on that provider (as a driver may), and it also calls it at random.

Everything checked is derived from what the driver saw (commands, events, its own inputs) and
from the resolved plan, never from the engine's internals:

* every message gets exactly one Finish, within a bounded number of steps and attempts;
* no attempt is alive past min(start + provider timeout, channel start + channel timeout,
  message deadline), and none is alive after its message finished;
* in a `single` scope no item starts after another item of that scope delivered;
* every channel that starts reports channel_finished exactly once, after its attempts' events
  and before the Finish - also when a late receipt or the message deadline cuts it;
* the status is `delivered` iff some attempt delivered (a 2xx to a live response-confirmed
  attempt, or a delivered receipt before the Finish);
* on_provider_unhealthy(P) on a provider whose breaker refuses attempts leaves no attempt on P in
  flight, starts none on P and counts no breaker failure; otherwise it changes nothing;
* the same inputs (same seeds) give the same commands.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routingd.daemon.core.engine import (CancelAttempt, Command, Delivery, Finish, Outcome, RecordEvent, SetTimer,
                                StartAttempt)
from routingd.daemon.core.health import HealthTracker
from routingd.daemon.core.plan import ChannelStep, GroupStep, Plan, resolve_plan
from routingd.daemon.core.policy import parse_policy

FIELDS = ("email", "phone_number", "user_id")
EPS = 1e-9
TICK = 0.125          # timings on a 1/8 s grid are exact in binary floats: real ties happen

# --------------------------------------------------------------------------- random policies

ticks_ms = lambda lo, hi: st.integers(lo, hi).map(lambda k: k * 125)   # noqa: E731
methods = st.sampled_from(["single", "all"])


@st.composite
def provider_tables(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "sandbox", "retries": draw(st.integers(0, 2))}
    if draw(st.integers(0, 3)):
        p["timeout"] = draw(ticks_ms(0, 32))
    if draw(st.booleans()):
        p["confirm"] = "receipt"
        p["receipt_timeout"] = draw(ticks_ms(1, 24))
    p["breaker"] = draw(st.one_of(st.just(False), st.fixed_dictionaries(
        {"failures": st.integers(1, 3), "cooldown": ticks_ms(1, 40)},
        optional={"slow": ticks_ms(1, 24)})))
    base = draw(ticks_ms(0, 8))
    p["backoff"] = {"base": base, "max": base + draw(ticks_ms(0, 16))}
    return p


@st.composite
def route_items(draw: st.DrawFn, names: list[str], depth: int = 0) -> list[Any]:
    """`names` (each once) split into a random nesting of single/all groups."""
    out: list[Any] = []
    i = 0
    while i < len(names):
        size = draw(st.integers(1, len(names) - i))
        chunk = names[i:i + size]
        i += size
        if depth >= 3 or (size == 1 and draw(st.booleans())):
            out.extend(chunk)
        else:
            out.append({"method": draw(methods), "channels": draw(route_items(chunk, depth + 1))})
    return out


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    providers = {f"p{i}": draw(provider_tables()) for i in range(draw(st.integers(1, 5)))}
    channels: dict[str, Any] = {}
    for j in range(draw(st.integers(1, 4))):
        c: dict[str, Any] = {"providers": draw(st.lists(st.sampled_from(sorted(providers)), min_size=1,
                                                         max_size=3, unique=True)),
                             "method": draw(methods)}
        if draw(st.booleans()):
            c["timeout"] = draw(ticks_ms(1, 64))
        if draw(st.integers(0, 3)) == 0:
            c["requires"] = draw(st.sampled_from(FIELDS))
        channels[f"c{j}"] = c
    order = list(draw(st.permutations(sorted(channels))))
    route: dict[str, Any] = {"method": draw(methods), "channels": draw(route_items(order))}
    timeouts = {k: v for k, v in (("provider", draw(st.none() | ticks_ms(0, 24))),
                                  ("channel", draw(st.none() | ticks_ms(1, 64))),
                                  ("message", draw(st.none() | ticks_ms(0, 160)))) if v is not None}
    if timeouts:
        route["timeouts"] = timeouts
    doc: dict[str, Any] = {"providers": providers, "channels": channels, "routes": {"default": route},
                           # file defaults keep the built-in 5m/30m/72h out of most runs
                           "timeouts": {"provider": draw(ticks_ms(1, 24)), "channel": draw(ticks_ms(1, 96)),
                                        "message": draw(ticks_ms(1, 200))}}
    if draw(st.booleans()):
        doc["failover"] = {"on": draw(st.lists(st.sampled_from([408, 429, 500, 503, "5xx", "4xx", "timeout",
                                                                 "network"]), unique=True, max_size=5))}
    return doc


recipients = st.fixed_dictionaries({}, optional={f: st.sampled_from(["x", ""]) for f in FIELDS}).map(
    lambda d: d or {"user_id": ""})
messages = st.lists(st.tuples(recipients, st.integers(0, 40).map(lambda k: k * TICK)), min_size=1, max_size=3)


# --------------------------------------------------------------------------- the driver


@dataclass
class Attempt:
    msg: int
    start: StartAttempt
    bound: float                  # min(attempt, channel, message deadline), computed here
    confirm: str
    ended_at: float | None = None


@dataclass
class MessageState:
    d: Delivery
    accepted: float
    message_deadline: float
    timer_token: int = 0
    armed: bool = False           # the driver holds a live wake-up for this message
    early_at: float | None = None # the wake-up last fired early (each is fired early at most once)
    channel_start: dict[str, float] = field(default_factory=dict)
    finish: Finish | None = None
    finishes: int = 0
    evidence: bool = False        # the driver saw a delivery
    log: list[tuple[int, Command]] = field(default_factory=list)   # (global index, command)


@dataclass
class Result:
    commands: list[tuple[int, Command]]
    states: list[MessageState]
    attempts: dict[str, Attempt]
    plan: Plan
    steps: int


def index_plan(plan: Plan) -> tuple[dict[str, ChannelStep], list[tuple[str, list[set]]]]:
    """Channel steps by name; and every `single` scope as (name, children as key sets)."""
    channels: dict[str, ChannelStep] = {}
    singles: list[tuple[str, list[set]]] = []

    def keys(step: ChannelStep | GroupStep) -> set:
        if isinstance(step, ChannelStep):
            return {step.channel}
        return set().union(*(keys(s) for s in step.items)) if step.items else set()

    def walk(step: ChannelStep | GroupStep, name: str) -> None:
        if isinstance(step, ChannelStep):
            channels[step.channel] = step
            if step.method == "single":
                singles.append((f"channel {step.channel}", [{(step.channel, p.provider)} for p in step.providers]))
            return
        if step.method == "single":
            singles.append((name, [keys(s) for s in step.items]))
        for i, s in enumerate(step.items):
            walk(s, f"{name}.{i}")
    walk(plan.root, "route")
    return channels, singles


def simulate(doc: dict[str, Any], msgs: list[tuple[dict[str, Any], float]], seed: int,
             events: frozenset[str] | None = None) -> Result:
    policy = parse_policy(tomli_w.dumps(doc), "random.toml", env={})
    plan = resolve_plan(policy, "default")
    chan_steps, _ = index_plan(plan)
    breaker_on = {p.provider: p.breaker_failures is not None for ch in chan_steps.values() for p in ch.providers}
    breaker_on.update({p: False for p in doc["providers"] if p not in breaker_on})
    health = HealthTracker()
    drv = random.Random(seed)
    heap: list[tuple[float, float, int, str, int, Any]] = []
    seq = itertools.count()
    states: list[MessageState] = []
    attempts: dict[str, Attempt] = {}
    commands: list[tuple[int, Command]] = []
    gidx = itertools.count()

    def push(t: float, kind: str, m: int, payload: Any) -> None:
        heapq.heappush(heap, (t, drv.random(), next(seq), kind, m, payload))

    for m, (to, accepted) in enumerate(msgs):
        d = Delivery(f"m{m}", plan, to, accepted, random.Random(seed * 31 + m), health,
                     events=events)
        states.append(MessageState(d, accepted, accepted + plan.message_timeout_ms / 1000.0))
        push(accepted, "start", m, None)
        for _ in range(drv.randint(0, 3)):                    # spurious early wake-ups
            push(accepted + drv.randint(0, 200) * TICK, "spurious", m, None)
        for _ in range(drv.choice([0, 0, 1, 2])):             # stray provider-unhealthy calls
            push(accepted + drv.randint(0, 120) * TICK, "unhealthy", m, drv.choice(sorted(doc["providers"])))

    def schedule_answers(m: int, s: StartAttempt, now: float) -> None:
        kind = drv.choices(["2xx", "4xx", "5xx", "408", "429", "network", "hang"],
                           weights=[4, 1, 3, 1, 2, 2, 2])[0]
        r = drv.random()
        t = s.deadline if r < 0.15 else now + drv.randint(0, 16) * TICK if r < 0.75 else now + drv.uniform(0, 6)
        outcome = {"2xx": lambda: Outcome(drv.choice([200, 202])),
                   "4xx": lambda: Outcome(drv.choice([400, 401, 404, 422])),
                   "5xx": lambda: Outcome(drv.choice([500, 502, 503])),
                   "408": lambda: Outcome(408),
                   "429": lambda: Outcome(429, retry_after_s=drv.choice([None, drv.randint(0, 24) * TICK])),
                   "network": lambda: Outcome(network=True, detail="refused"),
                   "hang": lambda: None}[kind]()
        if outcome is not None:
            push(t, "outcome", m, (s.attempt_id, outcome))
        if s.confirm == "receipt" and kind in ("2xx", "hang") and drv.random() < 0.7:
            push(now + drv.randint(0, 64) * TICK, "receipt", m, (s.attempt_id, drv.choice(["delivered", "delivered",
                                                                                          "failed"])))

    def take(m: int, cmds: list[Command], now: float) -> None:
        st_ = states[m]
        for c in cmds:
            i = next(gidx)
            commands.append((m, c))
            st_.log.append((i, c))
            if isinstance(c, StartAttempt):
                assert st_.finish is None, "attempt started after Finish"
                assert c.started_at == now, "a punctual driver never sees back-dated attempts"
                assert c.channel in st_.channel_start, f"attempt in channel {c.channel} before it started"
                ch = chan_steps[c.channel]
                pstep = next(p for p in ch.providers if p.provider == c.provider)
                bound = min(now + pstep.timeout_ms / 1000.0,
                            st_.channel_start[c.channel] + ch.timeout_ms / 1000.0, st_.message_deadline)
                assert abs(c.deadline - bound) <= EPS, (c, bound)
                assert c.attempt_id not in attempts
                attempts[c.attempt_id] = Attempt(m, c, bound, pstep.confirm)
                schedule_answers(m, c, now)
            elif isinstance(c, CancelAttempt):
                a = attempts[c.attempt_id]
                assert a.msg == m and a.ended_at is None, f"cancel of an attempt that is not running: {c}"
                a.ended_at = now
            elif isinstance(c, SetTimer):
                assert st_.finish is None or c.at is None
                st_.timer_token += 1
                st_.armed = c.at is not None
                if c.at is not None:
                    assert c.at >= now - EPS, f"wake-up asked for the past: {c.at} < {now}"
                    push(c.at, "timer", m, st_.timer_token)
            elif isinstance(c, RecordEvent):
                ev = c.event
                assert ev.at == now or ev.type in ("message_deadline",), (ev, now)
                if ev.type == "channel_started":
                    assert ev.data["channel"] not in st_.channel_start, "a channel started twice"
                    st_.channel_start[ev.data["channel"]] = ev.at
                elif ev.type == "breaker_opened" and drv.random() < 0.8:
                    # as a driver may: fail over at once whatever is in flight on that provider
                    # (and now and then on every message, e.g. to catch back-offs on it too)
                    prov = ev.data["provider"]
                    every = drv.random() < 0.3
                    for other in sorted({a.msg for a in attempts.values()
                                         if every or (a.ended_at is None and a.start.provider == prov)}):
                        push(now, "unhealthy", other, prov)
                elif ev.type == "channel_finished" and ev.data["channel"] in st_.channel_start:
                    ch = chan_steps[ev.data["channel"]]
                    cdl = min(st_.channel_start[ch.channel] + ch.timeout_ms / 1000.0, st_.message_deadline)
                    assert ev.at <= cdl + EPS, f"channel {ch.channel} ran past its deadline"
            elif isinstance(c, Finish):
                st_.finishes += 1
                assert st_.finish is None, "a second Finish"
                st_.finish = c
                assert c.at == now
        # after every input: nothing alive at or past its deadline; nothing alive after Finish
        for a in attempts.values():
            if a.msg == m and a.ended_at is None:
                assert a.bound > now, f"attempt {a.start.attempt_id} alive at {now}, its deadline was {a.bound}"
                assert st_.finish is None, f"attempt {a.start.attempt_id} still running after Finish"
        if st_.finish is None:
            assert st_.d.next_wakeup is not None, "a pending delivery must always want a wake-up"
            assert st_.armed, "a pending delivery left its driver without a wake-up (it would stall)"

    steps = 0
    max_steps = 20_000
    while heap:
        steps += 1
        assert steps <= max_steps, "the run did not settle"
        now, _, _, kind, m, payload = heapq.heappop(heap)
        st_ = states[m]
        if kind == "start":
            take(m, st_.d.start(now), now)
        elif kind == "timer":
            if payload == st_.timer_token:
                st_.armed = False                     # this wake-up is used up
                if st_.early_at != now and drv.random() < 0.3:
                    st_.early_at = now                # fired a hair early (float rounding)
                    early = now - max(abs(now), 1.0) * 1e-12
                    cmds = st_.d.on_timer(early)
                    assert not [c for c in cmds if not isinstance(c, SetTimer)], \
                        f"nothing is due before the wake-up asked for, yet: {cmds}"
                    take(m, cmds, early)
                else:
                    take(m, st_.d.on_timer(now), now)
        elif kind == "spurious":
            take(m, st_.d.on_timer(now), now)
        elif kind == "outcome":
            aid, outcome = payload
            a = attempts[aid]
            alive = a.ended_at is None
            if alive:
                a.ended_at = now
                if a.confirm == "response" and outcome.status is not None and 200 <= outcome.status < 300:
                    st_.evidence = True
            cmds = st_.d.on_outcome(aid, outcome, now)
            if alive:
                seen = {c.event.type for c in cmds if isinstance(c, RecordEvent)
                        and c.event.data.get("attempt_id") == aid}
                assert seen & {"attempt_ended", "attempt_accepted"}, f"answer of live attempt {aid} ignored"
            take(m, cmds, now)
        elif kind == "unhealthy":
            prov = payload
            before = health.snapshot().get(prov)
            blocking = health.blocks(prov, now)
            in_flight = [a for a in attempts.values() if a.msg == m and a.ended_at is None and a.start.provider == prov]
            cmds = st_.d.on_provider_unhealthy(prov, now)
            take(m, cmds, now)
            cut = [c.attempt_id for c in cmds if isinstance(c, CancelAttempt) and c.reason == "breaker opened"]
            # A slow-call mark of this message that fell due before `now` is handled first: it
            # counts a failure on its own provider -- `prov` or another -- and may open that
            # breaker and fail its own attempt over (that cut is the mark's), or not, and its
            # attempt runs on. So `prov` refuses if it did before the call, or if a failure this
            # call counted opened it (judged by the breaker, not by the marks' events, which an
            # events filter may leave out; and not by blocks() alone: a half-open probe that the
            # call started re-arms the cooldown too).
            after = health.snapshot().get(prov)
            counted = after is not None and (before is None or after["failures"] > before["failures"])
            refuses = breaker_on[prov] and (health.blocks(prov, now) if counted else blocking)
            for aid in cut:
                p_ = attempts[aid].start.provider
                assert breaker_on[p_] and health.blocks(p_, now), f"{aid} on {p_} was cut, yet {p_} takes attempts"
            if not refuses:
                cut_here = [aid for aid in cut if attempts[aid].start.provider == prov]
                assert not cut_here, f"{prov} does not refuse attempts, yet {cut_here} were cut"
            else:
                assert not [a for a in in_flight if a.ended_at is None], f"attempts on {prov} still in flight"
                assert not [c for c in cmds if isinstance(c, StartAttempt) and c.provider == prov]
                other_ends = [c for c in cmds if isinstance(c, RecordEvent) and c.event.data.get("provider") == prov
                              and (c.event.type == "attempt_ended" and c.event.data["outcome"] != "cancelled"
                                   or c.event.type == "attempt_slow")]     # (a mark that fell due before now)
                if events is None and not other_ends:
                    assert health.snapshot().get(prov) == before, "a breaker failure was counted"
        elif kind == "receipt":
            aid, status = payload
            if status == "delivered" and st_.finish is None and attempts[aid].confirm == "receipt":
                st_.evidence = True
            take(m, st_.d.on_receipt(aid, status, now), now)
    return Result(commands, states, attempts, plan, steps)


# --------------------------------------------------------------------------- properties


def check(res: Result) -> None:
    _, singles = index_plan(res.plan)
    breakers = {p.provider: p.breaker_failures for ch in index_plan(res.plan)[0].values() for p in ch.providers}
    max_attempts = sum(p.retries + 1 for ch in index_plan(res.plan)[0].values() for p in ch.providers)
    for m, st_ in enumerate(res.states):
        # exactly one terminal status
        assert st_.finishes == 1 and st_.finish is not None, f"message {m} finished {st_.finishes} times"
        f = st_.finish
        assert st_.d.status == f.status and st_.d.terminal
        n_attempts = sum(1 for _, c in st_.log if isinstance(c, StartAttempt))
        assert n_attempts <= max_attempts
        # delivered iff some attempt delivered
        assert (f.status == "delivered") == st_.evidence, (f, st_.evidence)
        assert (f.delivered_at is not None) == (f.status == "delivered")
        if f.delivered_at is not None:
            assert st_.accepted <= f.delivered_at <= f.at
        assert f.at <= st_.message_deadline + EPS
        if f.status == "expired":
            assert f.at == st_.message_deadline or st_.accepted >= st_.message_deadline
        # single scopes: nothing starts after a sibling delivered
        for scope, children in singles:
            first_delivered: dict[int, int] = {}
            starts: dict[int, list[int]] = {k: [] for k in range(len(children))}
            for i, c in st_.log:
                if isinstance(c, StartAttempt):
                    key = (c.channel, c.provider)
                    for k, child in enumerate(children):
                        if key in child or c.channel in child:
                            starts[k].append(i)
                elif isinstance(c, RecordEvent):
                    ev = c.event
                    ch = ev.data.get("channel")
                    key = (ch, ev.data.get("provider"))
                    for k, child in enumerate(children):
                        hit = key in child or ch in child
                        if hit and ev.type in ("channel_started", "channel_skipped", "provider_skipped"):
                            starts[k].append(i)
                        if hit and ev.type == "delivered":
                            first_delivered.setdefault(k, i)
            for k, di in first_delivered.items():
                for k2, idxs in starts.items():
                    if k2 != k:
                        late = [i for i in idxs if i > di]
                        assert not late, f"message {m}: in single scope {scope}, item {k2} started after item {k} delivered"
        # each attempt ends exactly once in the event log, and its public record is closed
        ended = [c.event.data["attempt_id"] for _, c in st_.log
                 if isinstance(c, RecordEvent) and c.event.type == "attempt_ended"]
        started = [c.attempt_id for _, c in st_.log if isinstance(c, StartAttempt)]
        assert sorted(ended) == sorted(started)
        assert all(r.outcome is not None and r.ended_at is not None for r in st_.d.attempts.values())
        # every channel that started reports its end exactly once (however it was cut), after the
        # last event of its attempts and before the message's Finish
        open_: dict[str, int] = {}
        for i, c in st_.log:
            if isinstance(c, RecordEvent):
                ev = c.event
                ch = ev.data.get("channel")
                if ev.type == "channel_started":
                    open_[ch] = open_.get(ch, 0) + 1
                elif ev.type == "channel_finished":
                    assert open_.get(ch, 0) == 1, f"message {m}: channel {ch} finished without running"
                    open_[ch] -= 1
                elif ev.type in ("attempt_started", "attempt_ended", "attempt_accepted") and ch is not None:
                    assert open_.get(ch, 0) == 1, f"message {m}: attempt event of {ch} outside its channel"
            elif isinstance(c, Finish):
                assert not any(open_.values()), f"message {m}: channels {open_} never reported their end"
        # a slow-call mark: at most one per attempt, exactly `slow` after its start, before its
        # deadline and its end, and only with a breaker that has `slow`
        step_of = {p.provider: p for ch in index_plan(res.plan)[0].values() for p in ch.providers}
        began = {c.attempt_id: c for _, c in st_.log if isinstance(c, StartAttempt)}
        ended_at = {c.event.data["attempt_id"]: (i, c.event.at) for i, c in st_.log
                    if isinstance(c, RecordEvent) and c.event.type == "attempt_ended"}
        marked: set[str] = set()
        for i, c in st_.log:
            if isinstance(c, RecordEvent) and c.event.type == "attempt_slow":
                aid = c.event.data["attempt_id"]
                assert aid not in marked, f"attempt {aid} marked slow twice"
                marked.add(aid)
                sa, step = began[aid], step_of[began[aid].provider]
                assert step.breaker_failures is not None and step.breaker_slow_ms is not None
                assert c.event.at == sa.started_at + step.breaker_slow_ms / 1000.0 < sa.deadline
                assert aid not in ended_at or ended_at[aid][0] > i, f"attempt {aid} marked slow after it ended"
        # breaker = false never skips
        for _, c in st_.log:
            if isinstance(c, RecordEvent) and c.event.type == "provider_skipped":
                assert breakers[c.event.data["provider"]] is not None
        # a provider that delivered (even by a late receipt) is not tried again
        delivered_at_idx: dict[tuple[str, str], int] = {}
        for i, c in st_.log:
            if isinstance(c, RecordEvent) and c.event.type == "delivered":
                delivered_at_idx.setdefault((c.event.data["channel"], c.event.data["provider"]), i)
            elif isinstance(c, StartAttempt):
                di = delivered_at_idx.get((c.channel, c.provider))
                assert di is None, f"message {m}: {c.channel}/{c.provider} tried again after it delivered"
    # every attempt ended: nothing left running anywhere
    for aid, a in res.attempts.items():
        assert a.ended_at is not None, f"attempt {aid} never ended"
        assert a.ended_at <= a.bound + EPS, f"attempt {aid} alive until {a.ended_at} past {a.bound}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=policies(), msgs=messages, seed=st.integers(0, 2**32 - 1))
def test_engine_invariants_hold_for_random_policies_and_outcomes(doc: dict[str, Any],
                                                                 msgs: list[tuple[dict[str, Any], float]],
                                                                 seed: int) -> None:
    check(simulate(doc, msgs, seed))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=policies(), msgs=messages, seed=st.integers(0, 2**32 - 1))
def test_same_inputs_same_commands(doc: dict[str, Any], msgs: list[tuple[dict[str, Any], float]], seed: int) -> None:
    a = simulate(doc, msgs, seed)
    b = simulate(doc, msgs, seed)
    assert a.commands == b.commands
    assert [s.d.attempts.keys() for s in a.states] == [s.d.attempts.keys() for s in b.states]


# what this file's driver reads (its bookkeeping; breaker_opened to call on_provider_unhealthy)
DRIVER_READS = frozenset({"channel_started", "channel_finished", "breaker_opened", "attempt_ended",
                          "attempt_accepted", "finished"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=policies(), msgs=messages, seed=st.integers(0, 2**32 - 1))
def test_an_events_filter_drops_only_the_other_events(doc: dict[str, Any],
                                                     msgs: list[tuple[dict[str, Any], float]], seed: int) -> None:
    """Delivery(events=...) gives exactly the commands of an unfiltered one, less the RecordEvents of
    the types left out; status and attempts are the same."""
    full = simulate(doc, msgs, seed)
    some = simulate(doc, msgs, seed, events=DRIVER_READS)
    kept = [(m, c) for m, c in full.commands
            if not isinstance(c, RecordEvent) or c.event.type in DRIVER_READS]
    assert some.commands == kept
    assert len(kept) < len(full.commands)        # something was left out: the filter is not vacuous
    for a, b in zip(full.states, some.states):
        assert (a.d.status, a.d.delivered_at, a.d.duplicates) == (b.d.status, b.d.delivered_at, b.d.duplicates)
        assert [r.to_json() for r in a.d.attempts.values()] == [r.to_json() for r in b.d.attempts.values()]


def test_the_driver_can_see_a_violation() -> None:
    """The checker is not vacuous: an engine that forgets to cancel at the deadline is caught."""
    doc = {"providers": {"p0": {"type": "sandbox"}}, "channels": {"c0": {"providers": ["p0"]}},
           "routes": {"default": {"channels": ["c0"]}},
           "timeouts": {"provider": 1000, "channel": 2000, "message": 3000}}
    original = Delivery.on_timer
    try:
        Delivery.on_timer = lambda self, now: self._flush()     # type: ignore[method-assign]
        caught = False
        for seed in range(50):
            try:
                check(simulate(doc, [({"user_id": "u"}, 0.0)], seed))
            except AssertionError:
                caught = True
                break
        assert caught
    finally:
        Delivery.on_timer = original                            # type: ignore[method-assign]
