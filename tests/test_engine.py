"""The sans-IO engine, rule by rule (docs/configuration.md "Timeout precedence", "[failover]")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from routingd.daemon.core.engine import (AttemptRecord, CancelAttempt, Command, Delivery, Finish, Outcome, RecordEvent, SetTimer,
                                StartAttempt)
from routingd.daemon.core.health import HealthTracker
from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.core.policy import parse_policy

OK = Outcome(200)
E500 = Outcome(500)
E400 = Outcome(400)
NET = Outcome(network=True, detail="connection refused")

TWO_CHANNELS = """
[timeouts]
provider = "2s"
channel = "10s"
message = "1m"

[providers.a]
type = "sandbox"
{a}
[providers.b]
type = "sandbox"
{b}
[providers.c]
type = "sandbox"
{c}
[channels.email]
providers = ["a", "b"]
requires = "email"
{email}
[channels.sms]
providers = ["c"]
requires = "phone_number"
{sms}
[routes.default]
channels = ["email", "sms"]
{route}
"""

EVERYONE = {"email": "a@example.com", "phone_number": "+15550100", "user_id": "u1"}


def policy_text(**parts: str) -> str:
    """The providers' breakers without the slow-call mark unless a test sets its own breaker: the
    shipped default puts a mark at half the attempt timeout (issue 20), a wake-up and an
    attempt_slow event that the tests of deadlines, retries and failover would otherwise all have
    to step through; the mark has its own tests below (SLOW)."""
    keys = ("a", "b", "c", "email", "sms", "route")
    fill = {k: parts.get(k, "") for k in keys}
    for k in ("a", "b", "c"):
        if "breaker" not in fill[k]:
            fill[k] += "\nbreaker = { slow = false }\n"
    return TWO_CHANNELS.format(**fill)


@dataclass
class Harness:
    """One Delivery plus the commands it gave, with small readers over them."""

    d: Delivery
    log: list[Command] = field(default_factory=list)

    def feed(self, cmds: list[Command]) -> list[Command]:
        self.log += cmds
        return cmds

    def start(self, now: float = 0.0) -> list[Command]:
        return self.feed(self.d.start(now))

    def outcome(self, attempt: StartAttempt | str, o: Outcome, now: float) -> list[Command]:
        aid = attempt if isinstance(attempt, str) else attempt.attempt_id
        return self.feed(self.d.on_outcome(aid, o, now))

    def receipt(self, attempt: StartAttempt | str, status: str, now: float) -> list[Command]:
        aid = attempt if isinstance(attempt, str) else attempt.attempt_id
        return self.feed(self.d.on_receipt(aid, status, now))

    def timer(self) -> list[Command]:
        """Fire the wake-up the engine asked for last, at its time."""
        at = self.d.next_wakeup
        assert at is not None, "no timer set"
        return self.feed(self.d.on_timer(at))

    @property
    def wakeup(self) -> float | None:
        timers = [c for c in self.log if isinstance(c, SetTimer)]
        return timers[-1].at if timers else None


def make(text: str | None = None, route: str = "default", to: dict[str, Any] | None = None, seed: int = 1,
         health: HealthTracker | None = None, accepted_at: float = 0.0, message_id: str = "m1") -> Harness:
    policy = parse_policy(text if text is not None else policy_text(), "t.toml", env={})
    plan = resolve_plan(policy, route)
    return Harness(Delivery(message_id, plan, EVERYONE if to is None else to, accepted_at, random.Random(seed),
                            health if health is not None else HealthTracker()))


def starts(cmds: list[Command]) -> list[StartAttempt]:
    return [c for c in cmds if isinstance(c, StartAttempt)]


def only_start(cmds: list[Command]) -> StartAttempt:
    s = starts(cmds)
    assert len(s) == 1, s
    return s[0]


def cancels(cmds: list[Command]) -> list[CancelAttempt]:
    return [c for c in cmds if isinstance(c, CancelAttempt)]


def events(cmds: list[Command], type_: str | None = None) -> list[Any]:
    return [c.event for c in cmds if isinstance(c, RecordEvent) and (type_ is None or c.event.type == type_)]


def finish(cmds: list[Command]) -> Finish | None:
    f = [c for c in cmds if isinstance(c, Finish)]
    assert len(f) <= 1
    return f[0] if f else None


def who(s: StartAttempt) -> tuple[str, str, int]:
    return s.channel, s.provider, s.try_no


# --------------------------------------------------------------------------- the happy path


def test_first_provider_delivers() -> None:
    h = make()
    cmds = h.start(0.0)
    a = only_start(cmds)
    assert who(a) == ("email", "a", 1)
    assert (a.message_id, a.started_at, a.deadline, a.confirm) == ("m1", 0.0, 2.0, "response")
    assert a.idempotency_key == "m1:email:a"
    assert events(cmds)[0].type == "started" and events(cmds)[0].data["message_deadline"] == 60.0
    assert h.wakeup == 2.0
    cmds = h.outcome(a, OK, 0.3)
    assert finish(cmds) == Finish("delivered", 0.3, 0.3)
    assert [e.type for e in events(cmds)] == ["attempt_ended", "delivered", "channel_finished", "finished"]
    assert SetTimer(None) in cmds     # the wake-up is withdrawn
    assert h.d.status == "delivered" and h.d.terminal and h.d.finished_at == 0.3
    rec = h.d.attempts[a.attempt_id]
    assert (rec.outcome, rec.status_code, rec.ended_at) == ("delivered", 200, 0.3)
    assert h.wakeup is None           # a finished delivery wants no wake-up


def test_attempt_ids_are_unique_and_records_serialise() -> None:
    h = make()
    a = only_start(h.start(0.0))
    b = only_start(h.outcome(a, E500, 0.1))
    assert a.attempt_id != b.attempt_id
    assert h.d.attempts[a.attempt_id].to_json() == {
        "attempt_id": a.attempt_id, "channel": "email", "provider": "a", "try": 1, "started_at": 0.0,
        "ended_at": 0.1, "deadline": 2.0, "outcome": "failed", "status_code": 500}


# --------------------------------------------------------------------------- provider failover


@pytest.mark.parametrize("outcome", [Outcome(500), Outcome(502), Outcome(503), Outcome(408), Outcome(429), NET])
def test_provider_failover_on_retryable_outcome(outcome: Outcome) -> None:
    h = make()
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, outcome, 0.5)
    b = only_start(cmds)
    assert who(b) == ("email", "b", 1)
    assert (b.started_at, b.deadline) == (0.5, 2.5)
    fo = events(cmds, "failover")
    assert [(e.data["kind"], e.data["from"], e.data["to"]) for e in fo] == [("provider", "a", "b")]
    assert finish(cmds) is None
    assert h.d.attempts[a.attempt_id].outcome == ("network" if outcome.network else "failed")
    assert finish(h.outcome(b, OK, 0.7)) == Finish("delivered", 0.7, 0.7)


def test_provider_failover_on_attempt_timeout() -> None:
    h = make()
    a = only_start(h.start(0.0))
    assert h.wakeup == 2.0
    cmds = h.timer()
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "attempt deadline")]
    b = only_start(cmds)
    assert who(b) == ("email", "b", 1) and b.started_at == 2.0
    assert h.d.attempts[a.attempt_id].outcome == "timeout"
    # the answer of a cancelled attempt no longer counts
    assert starts(h.outcome(a, OK, 2.1)) == [] and not h.d.terminal
    assert h.d.attempts[a.attempt_id].outcome == "timeout"


def test_every_provider_failing_fails_over_to_the_next_channel_then_undeliverable() -> None:
    h = make()
    a = only_start(h.start(0.0))
    b = only_start(h.outcome(a, E500, 0.1))
    cmds = h.outcome(b, E500, 0.2)
    c = only_start(cmds)
    assert who(c) == ("sms", "c", 1)
    assert [(e.data["kind"], e.data["from"], e.data["to"]) for e in events(cmds, "failover")] == \
        [("channel", "email", "sms")]
    assert events(cmds, "channel_finished")[0].data == {"channel": "email", "result": "failed",
                                                        "reason": "every option exhausted"}
    cmds = h.outcome(c, NET, 0.3)
    assert finish(cmds) == Finish("undeliverable", 0.3, None)


# --------------------------------------------------------------------------- channel failover


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_non_retryable_status_fails_the_channel(status: int) -> None:
    h = make()
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, Outcome(status), 0.2)
    c = only_start(cmds)                      # b is never tried: the channel failed
    assert who(c) == ("sms", "c", 1)
    assert h.d.attempts[a.attempt_id].outcome == "rejected"
    assert h.d.attempts[a.attempt_id].status_code == status
    assert [e.data["kind"] for e in events(cmds, "failover")] == ["channel"]
    assert "b" not in {s.provider for s in starts(h.log)}


def test_failover_on_decides_what_is_retryable() -> None:
    text = policy_text() + '\n[failover]\non = [503, "timeout"]\n'
    for outcome, next_provider in ((Outcome(503), "b"), (Outcome(500), "c"), (NET, "c"), (Outcome(429), "c")):
        h = make(text)
        a = only_start(h.start(0.0))
        assert only_start(h.outcome(a, outcome, 0.1)).provider == next_provider, outcome
    text = policy_text() + '\n[failover]\non = [500]\n'
    h = make(text)
    h.start(0.0)
    cmds = h.timer()                          # attempt timeout, not retryable here
    assert only_start(cmds).provider == "c"


def test_4xx_class_in_failover_on() -> None:
    h = make(policy_text() + '\n[failover]\non = ["4xx"]\n')
    a = only_start(h.start(0.0))
    assert only_start(h.outcome(a, Outcome(404), 0.1)).provider == "b"


# --------------------------------------------------------------------------- requires


@pytest.mark.parametrize("to", [{"phone_number": "+1555"}, {"email": "", "phone_number": "+1555"},
                                {"email": None, "phone_number": "+1555"}])
def test_channel_without_required_field_is_skipped(to: dict[str, Any]) -> None:
    h = make(to=to)
    cmds = h.start(0.0)
    c = only_start(cmds)
    assert who(c) == ("sms", "c", 1)
    skipped = events(cmds, "channel_skipped")
    assert len(skipped) == 1 and skipped[0].data["channel"] == "email"
    assert "email" in skipped[0].data["reason"]
    assert events(cmds, "channel_started")[0].data["channel"] == "sms"


def test_every_channel_skipped_is_undeliverable_at_once() -> None:
    h = make(to={"user_id": "u1"})
    cmds = h.start(5.0)
    assert starts(cmds) == []
    assert finish(cmds) == Finish("undeliverable", 5.0, None)
    assert len(events(cmds, "channel_skipped")) == 2


# --------------------------------------------------------------------------- retries and back-off


def test_retries_use_exponential_full_jitter_backoff() -> None:
    text = policy_text(a='retries = 3\nbackoff = { base = "100ms", max = "250ms" }\ntimeout = "1s"')
    seed = 7
    h = make(text, seed=seed)
    mirror = random.Random(seed)
    s = only_start(h.start(0.0))
    now = 0.0
    caps = [0.1, 0.2, 0.25]           # base * 2^(try-1), capped at max
    for try_no, cap in enumerate(caps, start=1):
        assert who(s) == ("email", "a", try_no)
        now += 0.05
        cmds = h.outcome(s, E500, now)
        assert starts(cmds) == []
        sched = events(cmds, "retry_scheduled")
        assert len(sched) == 1
        delay = sched[0].data["delay_s"]
        assert 0.0 <= delay <= cap
        assert delay == mirror.uniform(0.0, cap)       # full jitter drawn from the rng passed in
        assert sched[0].data["at"] == h.wakeup == now + delay
        cmds = h.timer()
        now = now + delay
        s = only_start(cmds)
        assert s.started_at == now and s.deadline == now + 1.0
    # the 4th try (3 retries used up) fails over to the next provider
    assert who(s) == ("email", "a", 4)
    cmds = h.outcome(s, E500, now + 0.05)
    assert who(only_start(cmds)) == ("email", "b", 1)
    assert events(cmds, "retry_scheduled") == []


def test_backoff_delays_stay_within_their_bounds_over_many_seeds() -> None:
    text = policy_text(a='retries = 4\nbackoff = { base = "100ms", max = "300ms" }')
    seen: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    for seed in range(200):
        h = make(text, seed=seed)
        s = only_start(h.start(0.0))
        for try_no in range(1, 5):
            cmds = h.outcome(s, E500, h.d.attempts[s.attempt_id].started_at)
            seen[try_no].append(events(cmds, "retry_scheduled")[0].data["delay_s"])
            s = only_start(h.timer())
    for try_no, cap in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        delays = seen[try_no]
        assert all(0.0 <= x <= cap for x in delays)
        # full jitter spreads over the whole [0, cap] window, not a fixed delay
        assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap


def test_retry_on_attempt_timeout_and_network() -> None:
    h = make(policy_text(a="retries = 2"))
    s = only_start(h.start(0.0))
    cmds = h.timer()                                  # attempt deadline at 2s
    assert cancels(cmds) and events(cmds, "retry_scheduled")
    s = only_start(h.timer())
    assert who(s) == ("email", "a", 2)
    h.outcome(s, NET, s.started_at + 0.1)
    s = only_start(h.timer())
    assert who(s) == ("email", "a", 3)


def test_no_retry_on_non_retryable() -> None:
    h = make(policy_text(a="retries = 5"))
    s = only_start(h.start(0.0))
    cmds = h.outcome(s, E400, 0.1)
    assert events(cmds, "retry_scheduled") == [] and only_start(cmds).channel == "sms"


def test_backoff_that_does_not_fit_before_the_channel_deadline_fails_over() -> None:
    text = policy_text(a='retries = 1\nbackoff = { base = "5s", max = "5s" }', email='timeout = "1s"')
    for seed in range(20):
        h = make(text, seed=seed)
        s = only_start(h.start(0.0))
        cmds = h.outcome(s, E500, 0.5)
        mirror = random.Random(seed).uniform(0.0, 5.0)
        if 0.5 + mirror < 1.0:
            assert events(cmds, "retry_scheduled")[0].data["delay_s"] == mirror
        else:
            assert events(cmds, "retry_abandoned") and who(only_start(cmds)) == ("email", "b", 1)


def test_retry_after_is_honoured_when_it_fits() -> None:
    h = make(policy_text(a="retries = 1"))
    s = only_start(h.start(0.0))
    cmds = h.outcome(s, Outcome(429, retry_after_s=3.0), 0.5)
    sched = events(cmds, "retry_scheduled")
    assert sched[0].data["delay_s"] == 3.0 and h.wakeup == 3.5
    s2 = only_start(h.timer())
    assert who(s2) == ("email", "a", 2) and s2.started_at == 3.5


def test_retry_after_beyond_the_backoff_cap_is_still_honoured() -> None:
    h = make(policy_text(a='retries = 1\nbackoff = { base = "10ms", max = "20ms" }'))
    s = only_start(h.start(0.0))
    h.outcome(s, Outcome(503, retry_after_s=4.0), 0.0)
    assert only_start(h.timer()).started_at == 4.0


def test_retry_after_that_does_not_fit_fails_over_at_once() -> None:
    h = make(policy_text(a="retries = 3"))
    s = only_start(h.start(0.0))
    cmds = h.outcome(s, Outcome(429, retry_after_s=30.0), 0.5)     # channel deadline is 10s
    assert events(cmds, "retry_scheduled") == []
    assert events(cmds, "retry_abandoned")
    assert who(only_start(cmds)) == ("email", "b", 1)


def test_retry_after_without_retries_left_fails_over() -> None:
    h = make()
    s = only_start(h.start(0.0))
    assert who(only_start(h.outcome(s, Outcome(429, retry_after_s=1.0), 0.5))) == ("email", "b", 1)


# --------------------------------------------------------------------------- deadlines


def test_attempt_deadline_is_capped_by_the_channel_deadline() -> None:
    h = make(policy_text(a='timeout = "5s"', b='timeout = "5s"', email='timeout = "3s"'))
    a = only_start(h.start(0.0))
    assert a.deadline == 3.0
    h2 = make(policy_text(a='timeout = "5s"', b='timeout = "5s"', email='timeout = "3s"'))
    a = only_start(h2.start(0.0))
    b = only_start(h2.outcome(a, E500, 2.5))
    assert b.deadline == 3.0          # min(2.5 + 5, channel deadline 3)


def test_channel_deadline_cancels_and_fails_over() -> None:
    h = make(policy_text(a='timeout = "5s"', email='timeout = "3s"'))
    a = only_start(h.start(0.0))
    assert h.wakeup == 3.0
    cmds = h.timer()
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "channel deadline")]
    assert events(cmds, "channel_deadline")[0].data == {"channel": "email"}
    assert h.d.attempts[a.attempt_id].outcome == "timeout"
    c = only_start(cmds)
    assert who(c) == ("sms", "c", 1) and c.started_at == 3.0
    assert "b" not in {s.provider for s in starts(h.log)}    # the channel's time is up: no provider failover


def test_channel_deadline_while_in_backoff_fails_over() -> None:
    h = make(policy_text(a='retries = 1\ntimeout = "1s"', email='timeout = "2s"'))
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, Outcome(429, retry_after_s=1.5), 0.1)    # back-off until 1.6 < 2.0
    assert events(cmds, "retry_scheduled")
    a2 = only_start(h.timer())
    assert (a2.started_at, a2.deadline) == (1.6, 2.0)
    cmds = h.timer()
    assert cancels(cmds)[0].attempt_id == a2.attempt_id
    assert only_start(cmds).channel == "sms"


def test_message_deadline_expires_and_cancels_running_attempts() -> None:
    text = policy_text(route='method = "all"\ntimeouts = { message = "5s", provider = "1m", channel = "1m" }')
    h = make(text)
    cmds = h.start(0.0)
    a, c = starts(cmds)
    assert (a.deadline, c.deadline) == (5.0, 5.0)
    assert h.wakeup == 5.0
    cmds = h.timer()
    assert sorted(x.attempt_id for x in cancels(cmds)) == sorted([a.attempt_id, c.attempt_id])
    assert finish(cmds) == Finish("expired", 5.0, None)
    assert events(cmds, "message_deadline")
    assert {h.d.attempts[x.attempt_id].outcome for x in (a, c)} == {"timeout"}
    # the channels cut by the deadline say so, in plan order, before the message's end
    assert [(e.data["channel"], e.data["result"], e.data["reason"]) for e in events(cmds, "channel_finished")] \
        == [("email", "timeout", "message deadline"), ("sms", "timeout", "message deadline")]
    types = [e.type for e in events(cmds)]
    assert types.index("channel_finished") > max(i for i, t in enumerate(types) if t == "attempt_ended")
    assert types[-1] == "finished"
    # late answers change nothing
    late = h.outcome(a, OK, 5.1)
    assert finish(late) is None and starts(late) == [] and h.d.status == "expired"


def test_message_deadline_beats_channel_and_attempt_deadlines_at_the_same_time() -> None:
    text = policy_text(route='timeouts = { message = "2s", provider = "2s", channel = "2s" }')
    h = make(text)
    only_start(h.start(0.0))
    cmds = h.timer()
    assert finish(cmds) == Finish("expired", 2.0, None)
    assert starts(cmds) == []
    assert len(cancels(cmds)) == 1


def test_channel_timeout_larger_than_message_timeout_is_cut_by_the_message_deadline() -> None:
    text = policy_text(email='timeout = "5m"', route='timeouts = { message = "30s", provider = "5m" }')
    h = make(text, accepted_at=10.0)
    a = only_start(h.start(10.0))
    assert a.deadline == 40.0
    assert events(h.log, "channel_started")[0].data["deadline"] == 40.0


def test_resumed_message_past_its_deadline_expires_on_start() -> None:
    h = make(accepted_at=0.0)
    cmds = h.start(120.0)                      # message timeout is 1m
    assert starts(cmds) == [] and finish(cmds) == Finish("expired", 120.0, None)


def test_resumed_message_keeps_its_absolute_deadline() -> None:
    h = make(policy_text(route='timeouts = { message = "10s" }'), accepted_at=100.0)
    a = only_start(h.start(107.0))
    assert h.d.message_deadline == 110.0
    assert a.deadline == 109.0                 # provider timeout 2s
    b = only_start(h.timer())
    assert b.deadline == 110.0


# --------------------------------------------------------------------------- fan-out


def test_all_at_channel_level() -> None:
    h = make(policy_text(email='method = "all"'))
    cmds = h.start(0.0)
    a, b = starts(cmds)
    assert {(a.channel, a.provider), (b.channel, b.provider)} == {("email", "a"), ("email", "b")}
    assert finish(h.outcome(a, OK, 0.1)) is None            # b still runs
    cmds = h.outcome(b, E500, 0.2)
    assert finish(cmds) == Finish("delivered", 0.2, 0.1)
    assert "c" not in {s.provider for s in starts(h.log)}


def test_all_at_channel_level_every_provider_failing_fails_over() -> None:
    h = make(policy_text(email='method = "all"'))
    a, b = starts(h.start(0.0))
    h.outcome(a, E400, 0.1)
    cmds = h.outcome(b, E500, 0.2)
    assert only_start(cmds).channel == "sms"


def test_all_at_route_level() -> None:
    h = make(policy_text(route='method = "all"'))
    a, c = starts(h.start(0.0))
    assert (a.provider, c.provider) == ("a", "c")
    h.outcome(c, OK, 0.1)
    b = only_start(h.outcome(a, E500, 0.2))      # provider failover goes on inside the email channel
    assert b.provider == "b"
    cmds = h.outcome(b, OK, 0.3)
    assert finish(cmds) == Finish("delivered", 0.3, 0.1)
    assert h.d.duplicates == 0                   # fan-out deliveries are wanted, not duplicates


def test_all_at_route_level_one_channel_skipped() -> None:
    h = make(policy_text(route='method = "all"'), to={"phone_number": "+1"})
    c = only_start(h.start(0.0))
    assert finish(h.outcome(c, OK, 0.1)) == Finish("delivered", 0.1, 0.1)


NESTED = """
[timeouts]
provider = "2s"
channel = "10s"
message = "1m"

[providers.p1]
type = "sandbox"
[providers.p2]
type = "sandbox"
[providers.p3]
type = "sandbox"
[providers.p4]
type = "sandbox"

[channels.email]
providers = ["p1"]
[channels.sms]
providers = ["p2"]
[channels.chat]
providers = ["p3"]
[channels.push]
providers = ["p4"]

[routes.default]
method = "single"
channels = [{ method = "all", channels = ["email", "sms"] }, "push"]

[routes.deep]
method = "all"
channels = ["email", { method = "single", channels = ["sms", { method = "all", channels = ["chat", "push"] }] }]
"""


def test_nested_all_group_in_a_single_route() -> None:
    h = make(NESTED)
    e, s = starts(h.start(0.0))
    assert (e.channel, s.channel) == ("email", "sms")
    assert starts(h.outcome(e, E500, 0.1)) == []
    cmds = h.outcome(s, E400, 0.2)
    p = only_start(cmds)                          # the group failed as a whole: next route item
    assert p.channel == "push"
    assert [(x.data["kind"], x.data["to"]) for x in events(cmds, "failover")] == [("channel", "push")]
    assert finish(h.outcome(p, OK, 0.3)) == Finish("delivered", 0.3, 0.3)


def test_nested_all_group_delivering_stops_the_single_route() -> None:
    h = make(NESTED)
    e, s = starts(h.start(0.0))
    h.outcome(e, OK, 0.1)
    cmds = h.outcome(s, E500, 0.2)
    assert finish(cmds) == Finish("delivered", 0.2, 0.1)
    assert "push" not in {x.channel for x in starts(h.log)}


def test_deep_nesting() -> None:
    h = make(NESTED, route="deep")
    e, s = starts(h.start(0.0))
    assert (e.channel, s.channel) == ("email", "sms")
    cmds = h.outcome(s, E500, 0.1)               # sms failed: the inner all group starts
    chat, push = starts(cmds)
    assert (chat.channel, push.channel) == ("chat", "push")
    h.outcome(chat, E500, 0.2)
    h.outcome(e, E500, 0.3)
    cmds = h.outcome(push, OK, 0.4)
    assert finish(cmds) == Finish("delivered", 0.4, 0.4)


def test_single_group_delivered_cancels_nothing_still_needed_and_starts_nothing_more() -> None:
    h = make(NESTED, route="deep")
    e, s = starts(h.start(0.0))
    assert starts(h.outcome(s, OK, 0.1)) == []   # single group satisfied: chat/push never start
    cmds = h.outcome(e, E500, 0.2)
    assert finish(cmds) == Finish("delivered", 0.2, 0.1)
    assert {x.channel for x in starts(h.log)} == {"email", "sms"}


# --------------------------------------------------------------------------- receipts

RECEIPT = policy_text(a='confirm = "receipt"\nreceipt_timeout = "5s"', b='confirm = "receipt"\nreceipt_timeout = "5s"',
                      email='timeout = "20s"')


def test_receipt_confirms_delivery() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    assert a.confirm == "receipt"
    cmds = h.outcome(a, Outcome(202), 0.2)
    assert finish(cmds) is None
    acc = events(cmds, "attempt_accepted")[0]
    assert acc.data["receipt_deadline"] == 5.2 and h.wakeup == 5.2
    cmds = h.receipt(a, "delivered", 1.0)
    assert finish(cmds) == Finish("delivered", 1.0, 1.0)
    assert h.d.attempts[a.attempt_id].outcome == "delivered"
    assert h.d.attempts[a.attempt_id].status_code == 202


def test_receipt_before_the_response_cancels_the_call_and_delivers() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    cmds = h.receipt(a, "delivered", 0.1)
    assert cancels(cmds) and cancels(cmds)[0].attempt_id == a.attempt_id
    assert finish(cmds) == Finish("delivered", 0.1, 0.1)


def test_receipt_deadline_is_capped_by_the_channel_deadline() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1m"', email='timeout = "3s"'))
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, Outcome(200), 1.0)
    assert events(cmds, "attempt_accepted")[0].data["receipt_deadline"] == 3.0


def test_receipt_timeout_fails_over() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.2)
    cmds = h.timer()
    assert events(cmds, "receipt_timeout")[0].data["attempt_id"] == a.attempt_id
    assert cancels(cmds) == []                     # the call itself is over: nothing to cancel
    b = only_start(cmds)
    assert who(b) == ("email", "b", 1) and b.started_at == 5.2
    assert h.d.attempts[a.attempt_id].outcome == "timeout"


def test_failed_receipt_fails_over() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.2)
    cmds = h.receipt(a, "failed", 0.5)
    assert who(only_start(cmds)) == ("email", "b", 1)
    assert h.d.attempts[a.attempt_id].outcome == "failed"


def test_late_receipt_delivers_and_cancels_what_still_runs() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.2)
    b = only_start(h.timer())                      # receipt timeout -> b
    cmds = h.receipt(a, "delivered", 6.0)          # a's receipt after all
    assert events(cmds, "late_receipt")
    assert cancels(cmds) == [CancelAttempt(b.attempt_id, "delivered by a late receipt")]
    assert finish(cmds) == Finish("delivered", 6.0, 6.0)
    assert h.d.attempts[a.attempt_id].outcome == "delivered"
    assert h.d.attempts[b.attempt_id].outcome == "cancelled"
    assert h.d.duplicates == 0


def test_late_receipt_after_the_next_channel_delivered_counts_a_duplicate() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"', email='timeout = "20s"')
             .replace('providers = ["a", "b"]', 'providers = ["a"]'))
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.1)
    c = only_start(h.timer())                      # receipt timeout, email exhausted -> sms
    assert c.channel == "sms"
    assert finish(h.outcome(c, OK, 1.5)) == Finish("delivered", 1.5, 1.5)
    cmds = h.receipt(a, "delivered", 3.0)
    assert finish(cmds) is None                    # exactly one Finish
    assert h.d.duplicates == 1 and events(cmds, "duplicate")
    h.receipt(a, "delivered", 3.5)                 # the same receipt again is not another duplicate
    assert h.d.duplicates == 1


def test_late_receipt_while_the_next_channel_runs_delivers() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"').replace('providers = ["a", "b"]',
                                                                                 'providers = ["a"]'))
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.1)
    c = only_start(h.timer())
    cmds = h.receipt(a, "delivered", 1.5)
    assert cancels(cmds) == [CancelAttempt(c.attempt_id, "delivered by a late receipt")]
    assert finish(cmds) == Finish("delivered", 1.5, 1.5)


def test_channels_cut_by_a_late_receipt_report_their_end() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"').replace('providers = ["a", "b"]',
                                                                                 'providers = ["a"]'))
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.1)
    c = only_start(h.timer())                      # email exhausted at 1.1: sms runs
    cmds = h.receipt(a, "delivered", 1.5)
    fin = events(cmds, "channel_finished")
    assert [e.data for e in fin] == [{"channel": "sms", "result": "cancelled",
                                      "reason": "delivered by a late receipt"}]
    ended = events(cmds, "attempt_ended")
    assert [(e.data["attempt_id"], e.data["outcome"]) for e in ended] == [(c.attempt_id, "cancelled")]
    types = [e.type for e in events(cmds)]
    assert types.index("attempt_ended") < types.index("channel_finished") < types.index("finished")


LATE_INTO_GROUP = """
[timeouts]
provider = "2s"
channel = "10s"
message = "1m"

[providers.p1]
type = "sandbox"
confirm = "receipt"
receipt_timeout = "1s"
[providers.p3]
type = "sandbox"
[providers.p4]
type = "sandbox"
[providers.p5]
type = "sandbox"

[channels.email]
providers = ["p1"]
[channels.chat]
providers = ["p3"]
[channels.push]
providers = ["p4", "p5"]
method = "all"

[routes.default]
method = "single"
channels = ["email", { method = "all", channels = ["chat", "push"] }]
"""


def test_a_late_receipt_cutting_a_nested_group_ends_every_channel_in_it() -> None:
    h = make(LATE_INTO_GROUP)
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.1)
    cmds = h.timer()                               # receipt timeout: the all group starts
    running = starts(cmds)
    assert [(s.channel, s.provider) for s in running] == [("chat", "p3"), ("push", "p4"), ("push", "p5")]
    h.outcome(running[1], E500, 1.2)               # push/p4 ended by itself; p5 still runs
    cmds = h.receipt(a, "delivered", 1.5)
    assert sorted(c.attempt_id for c in cancels(cmds)) == sorted([running[0].attempt_id, running[2].attempt_id])
    assert [(e.data["channel"], e.data["result"], e.data["reason"]) for e in events(cmds, "channel_finished")] \
        == [("chat", "cancelled", "delivered by a late receipt"), ("push", "cancelled", "delivered by a late receipt")]
    assert finish(cmds) == Finish("delivered", 1.5, 1.5)
    # every channel that started also finished, exactly once
    started = sorted(e.data["channel"] for e in events(h.log, "channel_started"))
    assert sorted(e.data["channel"] for e in events(h.log, "channel_finished")) == started


def test_late_failed_receipt_changes_nothing() -> None:
    h = make(RECEIPT)
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.2)
    b = only_start(h.timer())
    cmds = h.receipt(a, "failed", 6.0)
    assert events(cmds, "late_receipt") and starts(cmds) == [] and cancels(cmds) == []
    assert h.d.attempts[a.attempt_id].outcome == "timeout"
    h.outcome(b, Outcome(202), 6.1)
    assert finish(h.receipt(b, "delivered", 6.2)) == Finish("delivered", 6.2, 6.2)


def test_receipt_for_an_unknown_attempt_is_recorded_only() -> None:
    h = make(RECEIPT)
    h.start(0.0)
    cmds = h.receipt("nope", "delivered", 0.1)
    assert [e.type for e in events(cmds)] == ["receipt_unknown"] and not h.d.terminal


def test_late_receipt_after_expiry_keeps_the_one_finish() -> None:
    h = make(policy_text(a='confirm = "receipt"', route='timeouts = { message = "3s" }'))
    a = only_start(h.start(0.0))
    h.outcome(a, Outcome(202), 0.1)
    assert finish(h.timer()) == Finish("expired", 3.0, None)
    cmds = h.receipt(a, "delivered", 4.0)
    assert finish(cmds) is None and h.d.status == "expired"


# --------------------------------------------------------------------------- breakers

BREAKER = policy_text(a='breaker = { failures = 2, cooldown = "10s", slow = false }')   # marks: SLOW below


def send(health: HealthTracker, now: float, mid: str, text: str = BREAKER) -> Harness:
    h = make(text, health=health, accepted_at=now, message_id=mid)
    h.start(now)
    return h


def test_breaker_opens_skips_probes_and_closes() -> None:
    health = HealthTracker()
    # two consecutive failures of a (on two messages) open its breaker
    for i, now in enumerate((0.0, 1.0)):
        h = send(health, now, f"m{i}")
        a = only_start(h.log)
        cmds = h.outcome(a, E500, now + 0.1)
        assert who(only_start(cmds)) == ("email", "b", 1)
    assert [e.type for e in events(cmds, "breaker_opened")] == ["breaker_opened"]
    assert health.is_open("a")
    # while open, a is skipped with an event and b is tried straight away
    h = send(health, 2.0, "m2")
    b = only_start(h.log)
    assert who(b) == ("email", "b", 1)
    skip = events(h.log, "provider_skipped")
    assert len(skip) == 1 and skip[0].data == {"channel": "email", "provider": "a", "reason": "breaker open"}
    # after the cooldown one probe goes through; others are still skipped meanwhile
    probe = send(health, 11.1, "m3")
    pa = only_start(probe.log)
    assert pa.provider == "a"
    other = send(health, 11.2, "m4")
    assert only_start(other.log).provider == "b"
    # the probe succeeds: closed, a is used again
    cmds = probe.outcome(pa, OK, 11.3)
    assert events(cmds, "breaker_closed") and not health.is_open("a")
    assert only_start(send(health, 11.4, "m5").log).provider == "a"


def test_breaker_probe_failure_keeps_it_open() -> None:
    health = HealthTracker()
    for i in range(2):
        h = send(health, 0.0, f"m{i}")
        h.outcome(only_start(h.log), E500, 0.0)
    probe = send(health, 10.0, "p")
    pa = only_start(probe.log)
    assert pa.provider == "a"
    probe.outcome(pa, E500, 10.5)
    assert health.is_open("a")
    assert only_start(send(health, 11.0, "m9").log).provider == "b"


def test_breaker_counts_timeouts_not_rejections() -> None:
    health = HealthTracker()
    for i in range(3):
        h = send(health, 0.0, f"r{i}")
        h.outcome(only_start(h.log), E400, 0.0)
    assert not health.is_open("a")
    for i in range(2):
        h = send(health, 0.0, f"t{i}")
        h.timer()                                  # attempt timeout
    assert health.is_open("a")


def test_breaker_every_provider_open_skips_the_channel() -> None:
    text = policy_text(a='breaker = { failures = 1, cooldown = "1m" }', b='breaker = { failures = 1, cooldown = "1m" }')
    health = HealthTracker()
    h = send(health, 0.0, "m0", text)
    b = only_start(h.outcome(only_start(h.log), E500, 0.1))
    h.outcome(b, E500, 0.2)
    h2 = send(health, 1.0, "m1", text)
    assert who(only_start(h2.log)) == ("sms", "c", 1)
    assert len(events(h2.log, "provider_skipped")) == 2


def test_breaker_false_never_skips() -> None:
    text = policy_text(a="breaker = false")
    health = HealthTracker()
    for i in range(20):
        h = send(health, float(i), f"m{i}", text)
        a = only_start(h.log)
        assert a.provider == "a"
        h.outcome(a, E500, i + 0.1)
    assert not health.is_open("a")
    assert events(h.log, "provider_skipped") == []


# --------------------------------------------------------------------------- provider unhealthy


def open_breaker(health: HealthTracker, now: float, text: str = BREAKER) -> list[Command]:
    """Other messages fail on `a` at `now` until its breaker (failures = 2) opens."""
    log: list[Command] = []
    for i in range(2):
        h = send(health, now, f"opener{i}", text)
        log += h.outcome(next(x for x in starts(h.log) if x.provider == "a"), E500, now)
        if health.is_open("a"):
            break
    assert events(log, "breaker_opened")
    return log


SLOW = policy_text(a='breaker = { failures = 2, cooldown = "10s", slow = "300ms" }')


def test_a_slow_attempt_counts_as_a_breaker_failure_at_its_mark_and_runs_on() -> None:
    """breaker.slow: an attempt still running `slow` after it started counts one breaker failure
    then (an attempt_slow event), and goes on running until its answer or its own deadline."""
    health = HealthTracker()
    h = send(health, 0.0, "m1", SLOW)
    a = only_start(h.log)
    assert h.wakeup == 0.3                                  # the mark comes before the 2 s deadline
    cmds = h.timer()
    slow = events(cmds, "attempt_slow")
    assert [(e.at, e.data["attempt_id"], e.data["provider"]) for e in slow] == [(0.3, a.attempt_id, "a")]
    assert slow[0].data["after_s"] == 0.3
    assert health.snapshot()["a"]["failures"] == 1 and not health.is_open("a")
    assert cancels(cmds) == [] and h.wakeup == 2.0          # still running, until its deadline
    # its timeout then is the same attempt's failure: not counted a second time
    cmds = h.timer()
    assert [e.data["outcome"] for e in events(cmds, "attempt_ended")] == ["timeout"]
    assert health.snapshot()["a"]["failures"] == 1
    assert who(only_start(cmds)) == ("email", "b", 1)


def test_a_slow_attempt_that_then_succeeds_resets_the_count() -> None:
    health = HealthTracker()
    h = send(health, 0.0, "m1", SLOW)
    a = only_start(h.log)
    h.timer()
    assert health.snapshot()["a"]["failures"] == 1
    assert finish(h.outcome(a, OK, 0.5)) == Finish("delivered", 0.5, 0.5)
    assert health.snapshot()["a"]["failures"] == 0


def test_an_attempt_answered_before_its_mark_is_not_slow() -> None:
    health = HealthTracker()
    h = send(health, 0.0, "m1", SLOW)
    a = only_start(h.log)
    cmds = h.outcome(a, E500, 0.1)                           # a plain failure: one count
    assert health.snapshot()["a"]["failures"] == 1
    assert not events(h.log, "attempt_slow")
    b = only_start(cmds)
    assert b.provider == "b" and h.wakeup == b.deadline     # no mark left behind for a


def test_the_slow_mark_that_opens_the_breaker_fails_its_own_attempt_over_at_once() -> None:
    health = HealthTracker()
    first = send(health, 0.0, "m1", SLOW)
    second = send(health, 0.1, "m2", SLOW)
    a1, a2 = only_start(first.log), only_start(second.log)
    first.timer()                                             # 0.3: one failure
    cmds = second.timer()                                     # 0.4: the second opens the breaker
    assert [e.type for e in events(cmds, "breaker_opened")] == ["breaker_opened"]
    assert cancels(cmds) == [CancelAttempt(a2.attempt_id, "breaker opened")]
    assert who(only_start(cmds)) == ("email", "b", 1) and only_start(cmds).started_at == 0.4
    # the other message's attempt is the driver's to cut (on_provider_unhealthy), as for any opening
    cmds = first.feed(first.d.on_provider_unhealthy("a", 0.4))
    assert cancels(cmds) == [CancelAttempt(a1.attempt_id, "breaker opened")]
    assert health.snapshot()["a"]["failures"] == 2          # cuts count nothing more


def test_a_slow_half_open_probe_fails_over_at_its_mark_not_at_its_timeout() -> None:
    """Hedging the probe: a probe still running at its mark re-opens the breaker, and its own
    message fails over then instead of waiting out the attempt timeout."""
    health = HealthTracker()
    for i in range(2):
        h = send(health, 0.0, f"m{i}", SLOW)
        h.outcome(only_start(h.log), E500, 0.0)
    assert health.is_open("a")
    probe = send(health, 10.0, "p", SLOW)
    pa = only_start(probe.log)
    assert pa.provider == "a"                                 # the half-open probe
    cmds = probe.timer()                                      # 10.3: still no answer
    assert cancels(cmds) == [CancelAttempt(pa.attempt_id, "breaker opened")]
    b = only_start(cmds)
    assert who(b) == ("email", "b", 1) and b.started_at == 10.3
    assert health.is_open("a") and only_start(send(health, 10.4, "m9", SLOW).log).provider == "b"


def test_no_mark_past_the_attempt_deadline_and_none_without_a_breaker() -> None:
    # slow >= the attempt's own deadline: the timeout is the only signal
    text = policy_text(a='timeout = "200ms"\nbreaker = { failures = 2, cooldown = "10s", slow = "300ms" }')
    h = make(text)
    h.start(0.0)
    assert h.wakeup == 0.2
    assert not events(h.timer(), "attempt_slow")
    # breaker = false: nothing to count, no mark
    h = make(policy_text(a="breaker = false"))
    h.start(0.0)
    assert h.wakeup == 2.0


def test_provider_unhealthy_fails_over_at_once_from_the_attempt_in_flight() -> None:
    health = HealthTracker()
    text = policy_text(a='breaker = { failures = 2, cooldown = "10s" }\nretries = 2')
    v = send(health, 0.0, "victim", text)
    a = only_start(v.log)
    assert a.provider == "a"
    open_breaker(health, 0.5, text)
    before = health.snapshot()["a"]
    cmds = v.feed(v.d.on_provider_unhealthy("a", 0.6))
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "breaker opened")]
    b = only_start(cmds)
    assert who(b) == ("email", "b", 1) and b.started_at == 0.6     # no retry on a despite retries = 2
    assert [(e.data["from"], e.data["to"]) for e in events(cmds, "failover")] == [("a", "b")]
    ended = events(cmds, "attempt_ended")
    assert [(e.data["attempt_id"], e.data["outcome"], e.data["detail"]) for e in ended] == \
        [(a.attempt_id, "cancelled", "breaker opened")]
    assert v.d.attempts[a.attempt_id].outcome == "cancelled"
    assert health.snapshot()["a"] == before            # no breaker failure counted
    assert v.wakeup == b.deadline
    # a's answer, if it still comes, no longer counts - and tells the breaker nothing either
    late = v.outcome(a, E500, 0.7)
    assert late == [] and health.snapshot()["a"] == before
    assert finish(v.outcome(b, OK, 0.8)) == Finish("delivered", 0.8, 0.8)


def test_provider_unhealthy_on_the_last_provider_fails_over_to_the_next_channel() -> None:
    health = HealthTracker()
    text = BREAKER.replace('providers = ["a", "b"]', 'providers = ["a"]')
    v = send(health, 0.0, "victim", text)
    a = only_start(v.log)
    open_breaker(health, 0.2, text)
    cmds = v.feed(v.d.on_provider_unhealthy("a", 0.3))
    assert cancels(cmds)[0].attempt_id == a.attempt_id
    assert who(only_start(cmds)) == ("sms", "c", 1)
    assert events(cmds, "channel_finished")[0].data == {"channel": "email", "result": "failed",
                                                        "reason": "every option exhausted"}


def test_provider_unhealthy_gives_up_a_pending_retry_of_that_provider() -> None:
    health = HealthTracker()
    text = policy_text(a='breaker = { failures = 2, cooldown = "10s" }\nretries = 1\n'
                         'backoff = { base = "1s", max = "1s" }')
    v = send(health, 0.0, "victim", text)
    a = only_start(v.log)
    v.outcome(a, Outcome(503, retry_after_s=0.9), 0.1)  # back-off until 1.0
    assert v.wakeup == 1.0
    open_breaker(health, 0.3, text)
    cmds = v.feed(v.d.on_provider_unhealthy("a", 0.4))
    assert cancels(cmds) == []                          # nothing was in flight
    assert events(cmds, "retry_abandoned")[0].data == {"channel": "email", "provider": "a",
                                                       "reason": "breaker opened"}
    assert who(only_start(cmds)) == ("email", "b", 1)


def test_provider_unhealthy_leaves_attempts_awaiting_their_receipt() -> None:
    health = HealthTracker()
    text = policy_text(a='breaker = { failures = 2, cooldown = "10s" }\nconfirm = "receipt"')
    v = send(health, 0.0, "victim", text)
    a = only_start(v.log)
    v.outcome(a, Outcome(202), 0.1)                      # accepted: the receipt may still come
    open_breaker(health, 0.2, text)
    assert v.feed(v.d.on_provider_unhealthy("a", 0.3)) == []
    assert finish(v.receipt(a, "delivered", 0.4)) == Finish("delivered", 0.4, 0.4)


def test_provider_unhealthy_is_ignored_unless_that_breaker_is_open_and_on() -> None:
    health = HealthTracker()
    v = send(health, 0.0, "victim")
    a = only_start(v.log)
    assert v.feed(v.d.on_provider_unhealthy("a", 0.1)) == []      # closed: nothing to do
    assert v.feed(v.d.on_provider_unhealthy("b", 0.1)) == []      # not in flight
    # the breaker opened under another policy version, but this plan has breaker = false for a
    off = send(health, 0.0, "off", policy_text(a="breaker = false"))
    oa = only_start(off.log)
    open_breaker(health, 0.2)
    assert off.feed(off.d.on_provider_unhealthy("a", 0.3)) == []
    assert off.d.attempts[oa.attempt_id].outcome is None
    # finished deliveries ignore it
    v.outcome(a, OK, 0.25)
    assert v.d.terminal and v.feed(v.d.on_provider_unhealthy("a", 0.3)) == []


def test_provider_unhealthy_is_ignored_once_a_probe_is_due() -> None:
    """A call that comes a cooldown late (the breaker would let a probe through) changes nothing."""
    health = HealthTracker()
    text = policy_text(a='breaker = { failures = 2, cooldown = "10s" }\ntimeout = "1m"', email='timeout = "1m"',
                       route='timeouts = { message = "2m" }')
    v = send(health, 0.0, "victim", text)
    a = only_start(v.log)
    open_breaker(health, 0.2, text)
    assert v.feed(v.d.on_provider_unhealthy("a", 10.2)) == []
    assert v.d.attempts[a.attempt_id].outcome is None


def test_provider_unhealthy_in_an_all_channel_cuts_only_that_provider() -> None:
    health = HealthTracker()
    text = policy_text(a='breaker = { failures = 2, cooldown = "10s" }', email='method = "all"')
    v = send(health, 0.0, "victim", text)
    a, b = starts(v.log)
    open_breaker(health, 0.2, text)
    cmds = v.feed(v.d.on_provider_unhealthy("a", 0.3))
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "breaker opened")] and starts(cmds) == []
    assert finish(v.outcome(b, OK, 0.4)) == Finish("delivered", 0.4, 0.4)


def test_provider_unhealthy_first_fires_what_fell_due_before_it() -> None:
    health = HealthTracker()
    v = send(health, 0.0, "victim")
    a = only_start(v.log)                               # deadline 2.0
    open_breaker(health, 2.5)
    cmds = v.feed(v.d.on_provider_unhealthy("a", 2.5))  # the driver is late: a timed out at 2.0
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "attempt deadline")]
    assert v.d.attempts[a.attempt_id].outcome == "timeout"
    b = only_start(cmds)
    assert (b.provider, b.started_at) == ("b", 2.0)


# --------------------------------------------------------------------------- timers and inputs


def test_one_wakeup_at_the_earliest_deadline() -> None:
    h = make(policy_text(route='method = "all"', email='method = "all"',
                         a='timeout = "3s"', b='timeout = "1s"', c='timeout = "2s"'))
    h.start(0.0)
    assert h.wakeup == 1.0
    h.timer()                                       # b times out
    assert h.wakeup == 2.0
    h.timer()                                       # c times out
    assert h.wakeup == 3.0


def test_a_late_timer_call_fires_everything_due_in_order() -> None:
    """A driver that wakes late still gets each deadline handled at its own time."""
    h = make(policy_text(a='timeout = "1s"', b='timeout = "1s"', c='timeout = "1s"'))
    h.start(0.0)
    cmds = h.feed(h.d.on_timer(100.0))
    assert finish(cmds) == Finish("undeliverable", 3.0, None)
    assert [(s.provider, s.started_at) for s in starts(h.log)] == [("a", 0.0), ("b", 1.0), ("c", 2.0)]


def test_an_early_timer_call_rearms_the_same_wakeup() -> None:
    """A driver whose timer fires a hair before the wake-up it was given (float rounding) has used
    up its timer: the engine must hand the wake-up back, or the delivery would stall forever."""
    h = make()
    a = only_start(h.start(0.1))
    assert h.wakeup == 2.1
    early = 2.1 - 1e-12
    cmds = h.feed(h.d.on_timer(early))
    assert cmds == [SetTimer(2.1)]                  # nothing fired, the same wake-up again
    assert h.d.attempts[a.attempt_id].outcome is None
    cmds = h.timer()                                # the re-armed wake-up fires the deadline
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "attempt deadline")]
    assert only_start(cmds).provider == "b"


def test_every_timer_call_on_a_pending_delivery_answers_with_a_wakeup() -> None:
    h = make(policy_text(a="retries = 1"))
    a = only_start(h.start(0.0))
    for now in (0.0, 0.5, 1.999):                   # spurious wake-ups
        assert [c for c in h.feed(h.d.on_timer(now)) if isinstance(c, SetTimer)] == [SetTimer(2.0)]
    h.outcome(a, E500, 1.0)
    at = h.wakeup
    assert at is not None and 1.0 <= at <= 1.5      # back-off
    assert h.feed(h.d.on_timer(at - 1e-9)) == [SetTimer(at)]
    assert only_start(h.timer()).try_no == 2


def test_outcome_at_exactly_the_deadline_counts() -> None:
    h = make()
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, OK, 2.0)
    assert finish(cmds) == Finish("delivered", 2.0, 2.0) and cancels(cmds) == []


def test_outcome_after_a_missed_deadline_does_not_count() -> None:
    h = make()
    a = only_start(h.start(0.0))
    cmds = h.outcome(a, OK, 2.5)                    # the driver was late with the timer
    assert cancels(cmds)[0].attempt_id == a.attempt_id
    assert finish(cmds) is None and h.d.attempts[a.attempt_id].outcome == "timeout"


def test_inputs_after_finish_give_no_commands_that_act() -> None:
    h = make()
    a = only_start(h.start(0.0))
    h.outcome(a, OK, 0.1)
    for cmds in (h.outcome(a, E500, 0.2), h.feed(h.d.on_timer(50.0)), h.receipt(a, "failed", 0.3)):
        assert not [c for c in cmds if isinstance(c, (StartAttempt, CancelAttempt, Finish, SetTimer))]


def test_same_seed_same_commands() -> None:
    text = policy_text(a='retries = 3', b='retries = 2')

    def run(seed: int) -> list[Command]:
        h = make(text, seed=seed)
        s = only_start(h.start(0.0))
        while not h.d.terminal:
            new = starts(h.outcome(s, E500, s.started_at + 0.01))
            if not h.d.terminal:
                s = new[0] if new else only_start(h.timer())
        return h.log
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_zero_provider_timeout_is_cancelled_in_the_same_batch() -> None:
    h = make(policy_text(a="timeout = 0"))
    cmds = h.start(0.0)
    a, b = starts(cmds)
    assert (a.provider, a.deadline) == ("a", 0.0)
    assert cancels(cmds) == [CancelAttempt(a.attempt_id, "attempt deadline")]
    assert b.provider == "b" and h.wakeup == 2.0


def test_a_stale_answer_at_a_deadline_still_fires_that_deadline() -> None:
    """Whatever input arrives at `now`, nothing is left alive at a deadline <= now."""
    h = make(policy_text(email='method = "all"', a='timeout = "1s"', b='timeout = "2s"'))
    a, b = starts(h.start(0.0))
    h.timer()                                       # a times out at 1.0 (cancelled)
    cmds = h.outcome(a, OK, 2.0)                    # a's stale answer arrives at b's deadline
    assert cancels(cmds) == [CancelAttempt(b.attempt_id, "attempt deadline")]


def test_late_receipt_stops_the_retries_of_its_provider() -> None:
    """A provider in an `all` channel (under an `all` route) is retrying when an earlier try's
    receipt says delivered: it is not tried again (that would send the message twice) and the
    channel - and so the message - completes."""
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"\nretries = 2\n'
                           'backoff = { base = "100ms", max = "100ms" }', email='method = "all"',
                         route='method = "all"'), to={"email": "a@example.com"})
    a1, b = starts(h.start(0.0))
    h.outcome(b, E500, 0.05)
    h.outcome(a1, Outcome(202), 0.1)
    cmds = h.timer()                                # receipt timeout at 1.1 -> back-off
    assert events(cmds, "receipt_timeout") and events(cmds, "retry_scheduled")
    a2 = only_start(h.timer())
    assert who(a2) == ("email", "a", 2)
    cmds = h.receipt(a1, "delivered", a2.started_at + 0.1)
    assert cancels(cmds) == [CancelAttempt(a2.attempt_id, "delivered by a late receipt")]
    f = finish(cmds)
    assert f is not None and f.status == "delivered"
    assert [s.try_no for s in starts(h.log) if s.provider == "a"] == [1, 2]


def test_late_receipt_during_backoff_stops_the_retry() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"\nretries = 2\n'
                           'backoff = { base = "5s", max = "5s" }', email='method = "all"',
                         route='method = "all"'), to={"email": "a@example.com"}, seed=1)
    a1, b = starts(h.start(0.0))
    h.outcome(b, E500, 0.05)
    h.outcome(a1, Outcome(202), 0.1)
    cmds = h.timer()
    assert events(cmds, "retry_scheduled")[0].data["at"] > 1.2      # still backing off at 1.2
    cmds = h.receipt(a1, "delivered", 1.2)
    assert finish(cmds) == Finish("delivered", 1.2, 1.2) and cancels(cmds) == []
    assert h.wakeup is None


def test_the_engines_fast_command_construction_equals_the_constructors() -> None:
    """The engine builds its commands with tuple.__new__ and positional fields (speed): if a
    field is ever added or moved, this fails and the engine's construction must follow."""
    from routingd.daemon.core.engine import Event, _record
    assert Event._fields == ("type", "at", "data")
    assert RecordEvent is Event
    assert StartAttempt._fields == ("attempt_id", "message_id", "channel", "provider", "try_no",
                                    "started_at", "deadline", "idempotency_key", "confirm")
    assert SetTimer._fields == ("at",) and Finish._fields == ("status", "at", "delivered_at")
    a = only_start(make().start(0.0))
    assert a == StartAttempt(a.attempt_id, "m1", "email", "a", 1, 0.0, 2.0, "m1:email:a", "response")
    assert a == StartAttempt(**a._asdict()) and type(a) is StartAttempt
    fast, plain = _record("x", 1.5, {"a": 1}), Event("x", 1.5, {"a": 1})
    assert fast == plain and repr(fast) == repr(plain) == "Event(type='x', at=1.5, data={'a': 1})"
    assert fast.event is fast and fast.event.type == "x"
    with pytest.raises(AttributeError):
        fast.type = "y"                             # type: ignore[misc]  # still immutable


def test_commands_are_equal_only_to_commands_of_their_own_type() -> None:
    assert SetTimer(1.0) == SetTimer(1.0) and SetTimer(1.0) != SetTimer(2.0)
    assert SetTimer(1.0) != (1.0,) and (1.0,) != SetTimer(1.0)
    assert CancelAttempt("a", "r") != ("a", "r")
    assert Finish("delivered", 1.0, None) != ("delivered", 1.0, None)
    assert hash(SetTimer(1.0)) == hash(SetTimer(1.0))


# --------------------------------------------------------------------------- resuming with known attempts


def resumed(text: str, known: list[AttemptRecord], route: str = "default") -> Harness:
    """A delivery of message m1 resumed (run 1) after a restart, told its earlier attempts."""
    policy = parse_policy(text, "t.toml", env={})
    h = Harness(Delivery("m1", resolve_plan(policy, route), EVERYONE, 0.0, random.Random(1), HealthTracker(), run=1))
    h.d.adopt(known)
    return h


def awaiting(aid: str, channel: str, provider: str, receipt_deadline: float | None) -> AttemptRecord:
    return AttemptRecord(aid, channel, provider, 1, 0.0, 2.0, None, None, 202, receipt_deadline)


def test_a_resumed_delivery_awaits_the_receipt_of_an_earlier_run_instead_of_resending() -> None:
    # email: a then b; the earlier run failed over to b, which answered 202
    h = resumed(RECEIPT, [AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, 1.0, "failed", 500),
                          awaiting("m1.0.2", "email", "b", 6.0)])
    cmds = h.start(3.0)
    assert starts(cmds) == []                               # nothing is sent again
    (ev,) = events(cmds, "attempt_resumed")
    assert ev.data["attempt_id"] == "m1.0.2" and ev.data["receipt_deadline"] == 6.0
    assert h.wakeup == 6.0                                   # its own receipt deadline, not a new one
    cmds = h.receipt("m1.0.2", "delivered", 4.0)
    assert finish(cmds) == Finish("delivered", 4.0, 4.0)
    assert h.d.attempts["m1.0.2"].outcome == "delivered"


def test_a_resumed_receipt_deadline_that_passed_fails_over_as_a_receipt_timeout() -> None:
    h = resumed(RECEIPT, [awaiting("m1.0.1", "email", "a", 2.5)])
    cmds = h.start(3.0)
    assert events(cmds, "receipt_timeout")
    # a retry of a (after its back-off) or b: a new attempt of this run, never the old id again
    if not starts(cmds):
        h.timer()
    new = starts(h.log)
    assert new and all(s.attempt_id.startswith("m1.1.") for s in new)


def test_a_receipt_deadline_that_passed_while_down_fails_over_now_with_a_full_provider_timeout() -> None:
    """Found by the kill -9 rounds with receipts (tests/test_crash.py): a restart 30 s after an
    awaited attempt's receipt deadline. The receipt timeout fires at the start, and the next
    providers get their whole timeout from then on. Before, the timeout fired at the old receipt
    deadline, the failover started there too (in the past), its attempt deadline had passed
    before the attempt was made, and the message went through b (and any other provider) on
    paper only and ended undeliverable with no call made."""
    h = resumed(RECEIPT, [AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, None, None, 202, 5.0)])
    cmds = h.start(35.0)
    (rt,) = events(cmds, "receipt_timeout")
    assert rt.at == 35.0
    if not starts(cmds):
        h.timer()
    new = starts(h.log)
    assert new and all(s.started_at >= 35.0 and s.deadline > 35.0 for s in new), new
    assert finish(h.log) is None                  # still pending: the new attempt runs
    assert not [e for e in events(h.log, "attempt_ended") if e.data["attempt_id"].startswith("m1.1.")]


def test_a_fanout_resumed_does_not_rerun_a_channel_that_delivered() -> None:
    text = policy_text(route='method = "all"')
    h = resumed(text, [AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, 0.5, "delivered", 200)])
    sms = only_start(h.start(3.0))
    assert who(sms) == ("sms", "c", 1)
    cmds = h.outcome(sms, E400, 3.5)                         # sms fails for good now
    assert finish(cmds) == Finish("delivered", 3.5, 0.5)    # delivered, when email delivered


def test_a_resumed_single_route_that_delivered_finishes_at_once() -> None:
    h = resumed(policy_text(), [AttemptRecord("m1.0.3", "sms", "c", 1, 0.0, 2.0, 1.5, "delivered", 200)])
    cmds = h.start(3.0)
    assert starts(cmds) == []
    assert finish(cmds) == Finish("delivered", 3.0, 1.5)


def test_adopt_ignores_attempts_the_plan_no_longer_has_and_ended_ones() -> None:
    h = resumed(RECEIPT, [awaiting("m1.0.1", "push", "z", 9.0),
                          AttemptRecord("m1.0.2", "email", "a", 1, 0.0, 2.0, 1.0, "cancelled", None)])
    a = only_start(h.start(3.0))
    assert who(a) == ("email", "a", 1) and a.attempt_id == "m1.1.1"


def test_a_receipt_for_an_attempt_cut_by_the_restart_counts() -> None:
    cut = AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, 1.0, "cancelled", None)
    h = resumed(RECEIPT, [cut])
    again = only_start(h.start(3.0))                        # the cut attempt's provider, called again
    assert again.attempt_id == "m1.1.1"
    cmds = h.feed(h.d.on_earlier_receipt(cut, "delivered", 3.5))     # `cut` becomes its record
    assert cut.outcome == "delivered"
    assert [c.attempt_id for c in cancels(cmds)] == ["m1.1.1"]
    assert finish(cmds) == Finish("delivered", 3.5, 3.5)
    # a `failed` one, or one for a finished message, is only recorded
    h2 = resumed(RECEIPT, [AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, 1.0, "cancelled", None)])
    only_start(h2.start(3.0))
    cmds = h2.feed(h2.d.on_earlier_receipt(AttemptRecord("m1.0.1", "email", "a", 1, 0.0, 2.0, 1.0, "cancelled", None),
                                           "failed", 3.5))
    assert [e.type for e in events(cmds)] == ["late_receipt"] and finish(cmds) is None


def test_an_earlier_receipt_for_a_channel_not_started_yet_completes_it_when_it_starts() -> None:
    h = resumed(policy_text(), [])                           # email (a, b), then sms (c)
    a = only_start(h.start(3.0))
    cmds = h.feed(h.d.on_earlier_receipt(AttemptRecord("m1.0.5", "sms", "c", 1, 0.0, 2.0, 1.0, "cancelled", None),
                                         "delivered", 3.2))
    assert finish(cmds) is None and events(cmds, "delivered")
    cmds = h.outcome(a, E400, 3.4)                           # email fails for good: sms is next
    assert starts(cmds) == []                                # ... and counts as delivered
    assert finish(cmds) == Finish("delivered", 3.4, 3.2)


# --------------------------------------------------------------------------- cancel (issue 16)


def test_cancel_cuts_the_running_attempt_and_finishes_cancelled() -> None:
    h = make()
    first = only_start(h.start(0.0))
    cmds = h.feed(h.d.cancel(0.5))
    assert [c.attempt_id for c in cancels(cmds)] == [first.attempt_id]
    f = finish(cmds)
    assert f is not None and f.status == "cancelled" and f.at == 0.5
    assert h.d.status == "cancelled" and h.d.attempts[first.attempt_id].outcome == "cancelled"
    # the attempt's late answer changes nothing, and a second cancel is a no-op
    assert finish(h.outcome(first, OK, 0.6)) is None and h.d.status == "cancelled"
    assert h.d.cancel(0.7) == []


def test_cancel_after_delivery_changes_nothing() -> None:
    h = make(policy_text(route='method = "single"'))
    first = only_start(h.start(0.0))
    h.outcome(first, OK, 0.1)
    assert h.d.status == "delivered"
    assert h.d.cancel(0.2) == [] and h.d.status == "delivered"
