"""Outbound rate limits and priorities (daemon/core/limiter.py, through the Fleet and the engine).

The bucket and the queue on their own; then whole messages through real Deliveries and the
Fleet, driven by a small discrete-event loop (the drivers' contract, daemon/core/fleet.py):
a message that cannot wait spills over to the next provider at once, no message waits past a
deadline because of the limiter (a property), and under saturation an urgent message never
waits longer than a bulk message that arrived before it.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.engine import Command, Delivery, Event, Finish, Outcome, SetTimer, StartAttempt
from routingd.daemon.core.fleet import Fleet
from routingd.daemon.core.limiter import GO, QUEUED, SPILL, Limit, Limiter, Pacer, TokenBucket
from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.core.policy import parse_policy

# ------------------------------------------------------------------ the bucket and the queue


def test_bucket_gives_burst_then_rate() -> None:
    b = TokenBucket(10.0, 3.0, 0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.time_for(1.0, 0.0) == 0.1
    assert not b.take(0.05)
    assert b.take(0.1)
    # never more than the burst saved up, however long it idles
    b.refill(100.0)
    assert b.tokens == 3.0


def test_bucket_throttled_by_429_for_retry_after_then_back() -> None:
    b = TokenBucket(10.0, 1.0, 0.0)
    assert b.take(0.0)
    b.throttle(0.0, 2.0)
    assert b.rate == 5.0
    assert b.time_for(1.0, 0.0) == 0.2          # half the rate while throttled
    b.refill(3.0)
    assert b.rate == 10.0 and b.throttled_until is None


# ------------------------------------------------------------------ the departure pacer


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 500.0), burst=st.integers(1, 20),
       gaps=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.5)), min_size=1, max_size=200),
       lags=st.lists(st.floats(0.0, 0.3), min_size=1, max_size=200))
def test_paced_departures_keep_to_the_bucket_however_late_the_calls_come_and_wake(
        rate: float, burst: int, gaps: list[float], lags: list[float]) -> None:
    """The driver's loop (daemon/adapters.py _paced), with calls bunched by the commits (`gaps`
    of 0) and each wake-up late by a lag (a busy event loop): the departures conform to a token
    bucket of the same rate and burst (the limiter's own, as a vendor would count them), in
    arrival order."""
    pacer = Pacer(rate, float(burst))
    vendor = TokenBucket(rate, float(burst), 0.0)
    arrival, last = 0.0, 0.0
    for k, gap in enumerate(gaps):
        arrival += gap
        t = max(arrival, last)              # one at a time, in order
        turns = 0
        while (w := pacer.wait(t)) > 0.0:
            t += w + lags[(k + turns) % len(lags)]     # woken late
            turns += 1
            assert turns < 10_000
        assert vendor.take(t), (t, vendor.tokens)
        last = t


def test_pacer_lets_calls_that_keep_to_the_rate_through_at_once() -> None:
    p = Pacer(10.0, 3.0)
    assert [p.wait(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]       # the burst, at once
    assert p.wait(0.0) == pytest.approx(0.1)                        # then one per 1/rate
    assert p.wait(0.1) == 0.0
    assert p.wait(10.0) == 0.0                                      # idle: the bucket is full again


def test_queue_priority_then_fifo_and_spill_past_latest() -> None:
    lim = Limiter({"ses": Limit(rate=1.0, burst=1.0)})
    assert lim.request("ses", "a", "a", 0, 0.0, 100.0) == (GO, 0.0)
    assert lim.request("ses", "bulk1", "bulk1", 0, 0.0, 100.0) == (QUEUED, 1.0)
    assert lim.request("ses", "bulk2", "bulk2", 0, 0.0, 100.0) == (QUEUED, 2.0)
    # an urgent one goes ahead of the bulk ones queued before it
    assert lim.request("ses", "urgent", "urgent", 10, 0.0, 100.0) == (QUEUED, 1.0)
    # a turn after `latest` spills at once
    assert lim.request("ses", "late", "late", 0, 0.0, 2.5) == (SPILL, 4.0)
    order = []
    for t in (1.0, 2.0, 3.0):
        order += [(w.ref, granted) for w, _p, granted, _wait in lim.due(t)]
    assert order == [("urgent", True), ("bulk1", True), ("bulk2", True)]
    assert lim.snapshot(3.0)["ses"]["spilled"] == 1


def test_a_queued_waiter_pushed_past_its_latest_spills_then() -> None:
    lim = Limiter({"ses": Limit(rate=1.0, burst=1.0)})
    lim.request("ses", "a", "a", 0, 0.0, 100.0)
    assert lim.request("ses", "bulk", "bulk", 0, 0.0, 1.5) == (QUEUED, 1.0)
    # an urgent arrival takes its 1.0 turn: bulk's turn is now 2.0, past its latest 1.5
    assert lim.request("ses", "urgent", "urgent", 5, 0.5, 100.0)[0] == QUEUED
    out = lim.due(0.5)
    assert [(w.ref, granted) for w, _p, granted, _wait in out] == [("bulk", False)]


def test_max_inflight_waits_for_a_release() -> None:
    lim = Limiter({"p": Limit(max_inflight=1)})
    assert lim.request("p", "a", "a", 0, 0.0, 100.0)[0] == GO
    assert lim.request("p", "b", "b", 0, 0.0, 100.0)[0] == QUEUED
    assert lim.due(1.0) == [] and lim.next_at(1.0) is None
    lim.release("p")
    assert [w.ref for w, *_ in lim.due(1.0)] == ["b"]


# ------------------------------------------------------------------ messages through the fleet

POLICY = """
[timeouts]
provider = "{provider}"
channel = "{channel}"
message = "1h"
[providers.ses]
type = "sandbox"
[providers.backup]
type = "sandbox"
[channels.email]
providers = [{providers}]
[routes.default]
channels = ["email"]
"""


def plan(providers: str = '"ses", "backup"', provider: str = "5s", channel: str = "10s") -> Any:
    text = POLICY.format(providers=providers, provider=provider, channel=channel)
    return resolve_plan(parse_policy(text, "routing.toml", env={}), "default")


@dataclass
class Msg:
    key: int
    delivery: Delivery
    arrived: float
    priority: int
    log: list[Command] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)   # provider -> first attempt start


class Sim:
    """A tiny discrete-event driver of the fleet's contract: providers answer 200 after `latency`."""

    def __init__(self, limits: dict[str, Limit], latency: float = 0.05) -> None:
        self.fleet: Fleet[Msg] = Fleet()
        self.fleet.limiter.configure(limits, 0.0)
        self.latency = latency
        self.q: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.msgs: list[Msg] = []
        self.calls: dict[str, list[float]] = {}

    def at(self, t: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.q, (t, self.seq, kind, data))

    def execute(self, m: Msg, cmds: list[Command]) -> None:
        for c in cmds:
            m.log.append(c)
            if isinstance(c, StartAttempt):
                m.started.setdefault(c.provider, self.now)
                self.calls.setdefault(c.provider, []).append(self.now)
                self.at(self.now + self.latency, "answer", (m, c))
            elif isinstance(c, Finish):
                self.fleet.finished(m.key)
            elif isinstance(c, SetTimer) and c.at is not None:
                self.at(c.at, "timer", (m, c.at))

    def send(self, t: float, p: Any, priority: int = 0) -> None:
        self.at(t, "arrive", (p, priority))

    def run(self) -> None:
        fleet = self.fleet
        for _ in range(2_000_000):
            nxt = fleet.limiter.next_at(self.now)
            if nxt is not None and (not self.q or nxt <= self.q[0][0]):
                self.now = max(self.now, nxt)
                fleet.dispatch(self.now, self.execute)
                continue
            if not self.q:
                return
            t, _s, kind, data = heapq.heappop(self.q)
            self.now = t
            if kind == "arrive":
                p, prio = data
                m = Msg(len(self.msgs), Delivery(f"m{len(self.msgs)}", p, {}, t, random.Random(1), fleet.health,
                                                 limiter=fleet.limiter, priority=prio), t, prio)
                self.msgs.append(m)
                fleet.admit(m.key, m)
                self.execute(m, m.delivery.start(t))
            elif kind == "answer":
                m, c = data
                fleet.limiter.release(c.provider)
                self.execute(m, m.delivery.on_outcome(c.attempt_id, Outcome(200), t))
            else:
                m, at = data
                if m.delivery.next_wakeup == at and not m.delivery.terminal:
                    self.execute(m, m.delivery.on_timer(fleet.wake_time(t, at)))
            fleet.dispatch(self.now, self.execute)
        raise AssertionError("the simulation did not end")


def events(m: Msg, type_: str) -> list[Event]:
    return [c for c in m.log if isinstance(c, Event) and c.type == type_]


def test_a_deadline_that_cannot_wait_spills_to_the_next_provider_at_once() -> None:
    sim = Sim({"ses": Limit(rate=1.0, burst=1.0)})
    p = plan()          # channel 10 s, provider 5 s: a wait on ses must end before 5 s
    for _ in range(10):
        sim.send(0.0, p)
    sim.run()
    assert all(m.delivery.status == "delivered" for m in sim.msgs)
    spilled = [m for m in sim.msgs if events(m, "provider_spilled")]
    # ses serves one now and one a second after: turns 0..4 s leave the full 5 s provider timeout
    # before the 10 s channel deadline; a turn at 5 s or later would not: those 5 spill at t=0
    assert len(spilled) == 5
    for m in spilled:
        ev = events(m, "provider_spilled")[0]
        assert ev.at == 0.0 and ev.data["expected_wait_s"] >= 5.0
        assert m.started == {"backup": 0.0}
        assert not events(m, "channel_deadline")


def test_the_last_provider_waits_its_turn_until_the_channel_deadline() -> None:
    sim = Sim({"ses": Limit(rate=1.0, burst=1.0)})
    p = plan('"ses"')       # no next provider: waiting is the only way, up to the channel deadline
    for _ in range(15):
        sim.send(0.0, p)
    sim.run()
    delivered = [m for m in sim.msgs if m.delivery.status == "delivered"]
    assert len(delivered) == 10         # turns at 0..9 s, before the 10 s channel deadline
    for m in sim.msgs:
        if m.delivery.status != "delivered":
            assert events(m, "provider_spilled") and not m.started


@settings(max_examples=60, deadline=None)
@given(arrivals=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3), st.sampled_from(["1s", "3s", "8s"])),
                         min_size=1, max_size=60),
       rate=st.sampled_from([0.5, 2.0, 10.0]), burst=st.sampled_from([1.0, 3.0]),
       inflight=st.sampled_from([None, 2]))
def test_property_no_message_waits_past_a_deadline_because_of_the_limiter(
        arrivals: list[tuple[float, int, str]], rate: float, burst: float, inflight: int | None) -> None:
    sim = Sim({"ses": Limit(rate=rate, burst=burst, max_inflight=inflight)})
    plans = {c: plan(provider="1s", channel=c) for c in ("1s", "3s", "8s")}
    for t, prio, channel in arrivals:
        sim.send(t, plans[channel], prio)
    sim.run()
    calls = sim.calls.get("ses", [])
    for m in sim.msgs:
        d = m.delivery
        assert d.status == "delivered"          # the backup is unlimited: every message gets through
        chan = [e for e in events(m, "channel_started")][0].data["deadline"]
        if "ses" in m.started:
            # granted: early enough for its full provider timeout before the channel deadline
            assert m.started["ses"] + 1.0 <= chan + 1e-9
        # never ended by a deadline while it waited for the limiter
        assert not events(m, "channel_deadline")
    # the bucket held: no window of length w saw more than burst + rate * w calls
    for i, a in enumerate(calls):
        for b in calls[i:]:
            n = sum(1 for c in calls if a <= c <= b)
            assert n <= burst + rate * (b - a) + 1e-6


def test_priority_under_saturation_urgent_never_waits_longer_than_earlier_bulk() -> None:
    sim = Sim({"ses": Limit(rate=5.0, burst=1.0)})
    p = plan('"ses"', provider="1m", channel="1h")
    rng = random.Random(7)
    for i in range(200):
        sim.send(i * 0.05, p, 10 if rng.random() < 0.2 else 0)     # 20/s against 5/s: saturated
    sim.run()
    assert all(m.delivery.status == "delivered" for m in sim.msgs)

    def wait(m: Msg) -> float:
        return m.started["ses"] - m.arrived
    urgent = [m for m in sim.msgs if m.priority == 10]
    bulk = [m for m in sim.msgs if m.priority == 0]
    compared = 0
    for u in urgent:
        for b in bulk:
            # "under saturation": b was still waiting when u arrived (a bulk message served before
            # the urgent one even arrived cannot be overtaken)
            if b.arrived <= u.arrived < b.started["ses"]:
                compared += 1
                assert u.started["ses"] <= b.started["ses"], (u.key, b.key)
                assert wait(u) <= wait(b) + 1e-9, (u.key, b.key)
    assert compared > 1000          # the queue was saturated most of the time
    # equal priority: first come, first served
    for group in (urgent, bulk):
        starts = [m.started["ses"] for m in group]
        assert starts == sorted(starts)


def test_a_429_with_retry_after_slows_the_bucket_for_that_long() -> None:
    fleet: Fleet[Msg] = Fleet()
    fleet.limiter.configure({"ses": Limit(rate=10.0, burst=1.0)}, 0.0)
    d = Delivery("m", plan(), {}, 0.0, random.Random(1), fleet.health, limiter=fleet.limiter)
    cmds = d.start(0.0)
    a = next(c for c in cmds if isinstance(c, StartAttempt))
    fleet.limiter.release("ses")
    d.on_outcome(a.attempt_id, Outcome(429, retry_after_s=30.0), 0.1)
    snap = fleet.limiter.snapshot(0.1)["ses"]
    assert snap["rate_now"] == 5.0 and snap["throttled"] == 1
    assert fleet.limiter.snapshot(31.0)["ses"]["rate_now"] == 10.0


# ------------------------------------------------------------------ a vendor's 429 and the breaker


def _answer_429s(limits: dict[str, Limit], n: int = 8) -> tuple[Fleet[Msg], list[Delivery]]:
    """n messages, each answered 429 by ses at its first attempt (breaker: 5 failures, the default)."""
    fleet: Fleet[Msg] = Fleet()
    fleet.limiter.configure(limits, 0.0)
    out = []
    p = plan(provider="1s", channel="1m")
    for i in range(n):
        d = Delivery(f"m{i}", p, {}, 0.0, random.Random(i), fleet.health, limiter=fleet.limiter)
        fleet.admit(i, Msg(i, d, 0.0, 0))
        a = next((c for c in d.start(0.0) if isinstance(c, StartAttempt) and c.provider == "ses"), None)
        if a is None:
            break                   # ses's breaker is open: skipped
        fleet.limiter.release("ses")
        d.on_outcome(a.attempt_id, Outcome(429, retry_after_s=0.5), 0.0)
        out.append(d)
    return fleet, out


def test_429s_on_a_rate_limited_provider_do_not_open_its_breaker() -> None:
    """issue 21: the vendor saying "too fast" to a provider routingd paces is the limiter's to
    answer (it halves the rate, above), not a sign the provider is down: no breaker failure."""
    fleet, ds = _answer_429s({"ses": Limit(rate=100.0, burst=100.0)})
    assert not fleet.health.is_open("ses")
    assert fleet.health.snapshot().get("ses", {}).get("failures", 0) == 0
    assert fleet.limiter.snapshot(0.0)["ses"]["throttled"] == 8
    for d in ds:
        # the attempt still failed as today, and the message failed over (retries 0: the default)
        assert [(r.provider, r.outcome) for r in d.attempts.values()] == [("ses", "failed"), ("backup", None)]


def test_429s_count_toward_the_breaker_without_a_configured_rate_limit() -> None:
    for limits in ({}, {"ses": Limit(max_inflight=10)}):      # no limit; only max_inflight: no bucket
        fleet, _ds = _answer_429s(limits)
        assert fleet.health.is_open("ses"), limits


# ------------------------------------------------------------------ a share of the limit (several processes)


def test_a_share_scales_rate_and_burst_and_comes_back() -> None:
    lim = Limiter({"ses": Limit(rate=14.0, burst=14.0), "mi": Limit(max_inflight=4)}, 0.0)
    lim.set_share(0.5, 0.0)
    s = lim.snapshot(0.0)["ses"]
    assert (s["rate_limit"], s["rate_now"], s["burst"], s["burst_now"], s["share"]) == (14.0, 7.0, 14.0, 7.0, 0.5)
    assert lim.snapshot(0.0)["mi"]["max_inflight"] == 4           # not split
    # the full bucket (14) keeps only the new size: 7 calls at once, then 7/s
    assert [lim.request("ses", None, i, 0, 0.0, 100.0)[0] for i in range(8)] == [GO] * 7 + [QUEUED]
    assert lim.expected_wait("ses", 0, 0.0) == pytest.approx(2 / 7.0)
    lim.set_share(1.0, 0.0)
    s = lim.snapshot(0.0)["ses"]
    assert (s["rate_now"], s["burst_now"]) == (14.0, 14.0)
    # a reload keeps the share for a new bucket
    lim.set_share(1 / 3, 0.0)
    lim.configure({"ses": Limit(rate=30.0)}, 0.0)
    assert lim.snapshot(0.0)["ses"]["rate_now"] == pytest.approx(10.0)


def test_a_share_never_leaves_a_bucket_below_one_token() -> None:
    lim = Limiter({"p": Limit(rate=2.0, burst=1.0)}, 0.0)
    lim.set_share(0.25, 0.0)
    assert lim.snapshot(0.0)["p"]["burst_now"] == 1.0 and lim.snapshot(0.0)["p"]["rate_now"] == 0.5
    assert lim.request("p", None, "a", 0, 0.0, 100.0)[0] == GO
    pacer = Pacer(2.0, 1.0, share=0.25)
    assert (pacer.rate, pacer.burst, pacer.bucket.rate) == (2.0, 1.0, 0.5)
    assert pacer.wait(0.0) == 0.0 and pacer.wait(0.0) == pytest.approx(2.0)


def test_a_lower_share_spills_waiters_whose_turn_now_comes_too_late() -> None:
    lim = Limiter({"p": Limit(rate=1.0, burst=1.0)}, 0.0)
    assert lim.request("p", None, "go", 0, 0.0, 100.0)[0] == GO
    assert lim.request("p", None, "a", 0, 0.0, 1.5)[0] == QUEUED      # turn at 1 s, before 1.5 s
    lim.set_share(0.5, 0.0)                                            # now at 2 s: too late
    assert [(w.ref, granted) for w, _p, granted, _wait in lim.due(0.0)] == [("a", False)]


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5, float("nan")])
def test_a_share_outside_0_1_is_a_bug_said_clearly(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Limiter().set_share(share, 0.0)


def test_the_engine_tells_the_limiter_at_once_when_a_queued_run_stops_waiting() -> None:
    """A run cancelled, or cut by its channel deadline, while queued leaves the limiter's count at
    once (Limiter.cancel from the engine), so the next request counts only live waiters ahead."""
    fleet: Fleet[Msg] = Fleet()
    fleet.limiter.configure({"ses": Limit(rate=0.1, burst=1.0)}, 0.0)
    fleet.limiter.live = lambda w: True         # no polling: only the engine's report counts
    p = plan('"ses"', provider="1s", channel="1m")
    ds = [Delivery(f"m{i}", p, {}, 0.0, random.Random(i), fleet.health, limiter=fleet.limiter) for i in range(3)]
    ds[0].start(0.0)                            # takes the token
    for d in ds[1:]:
        assert any(isinstance(c, Event) and c.type == "attempt_queued" for c in d.start(0.0))
    prov = fleet.limiter._p["ses"]
    assert prov.live_n == 2
    ds[1].cancel(1.0)
    assert prov.live_n == 1
    ds[2].on_timer(61.0)                        # its channel deadline while it waits
    assert ds[2].terminal and prov.live_n == 0
    assert fleet.limiter.expected_wait("ses", 0, 61.0) <= 10.0     # nobody ahead any more


# ------------------------------------------------------------------ a message let go without a Finish


def test_a_message_taken_over_while_queued_leaves_the_queue_and_is_never_handed_a_turn() -> None:
    """A takeover by another process (daemon/cluster.py) lets go of a message whose run waits
    for its turn on a rate-limited provider. Its waiter must leave the queue: before, dispatch()
    took it for a message not admitted yet and queued it again, so it kept its place ahead of
    everyone behind it and the limiter's next turn stayed at once (the driver's wake-up spun)."""
    fleet: Fleet[Msg] = Fleet()
    fleet.limiter.configure({"ses": Limit(rate=1.0, burst=1.0)}, 0.0)
    p = plan(providers='"ses"', provider="5s", channel="60s")
    msgs = []
    for i in range(3):
        d = Delivery(f"m{i}", p, {}, 0.0, random.Random(i), fleet.health, limiter=fleet.limiter)
        m = Msg(i, d, 0.0, 0)
        fleet.admit(i, m)
        m.log.extend(d.start(0.0))
        msgs.append(m)
    assert [sum(isinstance(c, StartAttempt) for c in m.log) for m in msgs] == [1, 0, 0]  # m1, m2 queue
    fleet.finished(1)                       # m1 is taken over by another process
    assert msgs[1].delivery.status == "pending"     # its state is its new owner's, untouched here
    handed: list[int] = []

    def execute(m: Msg, cmds: list[Command]) -> None:
        handed.append(m.key)
        m.log.extend(cmds)

    fleet.dispatch(1.0, execute)            # one token: the next turn is m2's, not m1's
    assert handed == [2]
    assert any(isinstance(c, StartAttempt) for c in msgs[2].log)
    assert fleet.limiter.next_at(1.0) is None       # nobody waits: no wake-up left armed
    assert fleet.limiter.snapshot(1.0)["ses"]["queue"] == 0 and not fleet.limiter.waiting
