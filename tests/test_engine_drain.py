"""The two engine inputs only the daemon gives (docs/reliability.md "Clean restarts"):
Delivery.drain() -- the driver is stopping, so no attempt starts and no message is finished for
lack of one (the daemon drains every delivery when its SIGTERM grace period begins) -- and
Delivery.rebase() -- the driver's clock followed a step of the wall clock."""

from __future__ import annotations

import time

import pytest

from routingd.daemon.core.engine import Finish
from routingd.daemon.core.health import HealthTracker

from test_engine import E500, OK, events, finish, make, only_start, policy_text, starts


def test_a_failover_while_draining_is_held_not_started_and_the_message_stays_pending() -> None:
    h = make()
    a = only_start(h.start(0.0))
    h.d.drain()
    cmds = h.outcome(a, E500, 0.5)                 # a failed: failover to b is due, but it is held
    assert starts(cmds) == [] and finish(cmds) is None
    held = events(cmds, "attempt_held")
    assert [e.data for e in held] == [{"channel": "email", "provider": "b"}]
    assert h.d.held == 1 and not h.d.terminal
    assert list(h.d.attempts) == [a.attempt_id]    # no record of an attempt that never ran
    # the email channel's deadline (10 s) does not fire while it holds b; the message deadline does
    assert h.wakeup == 60.0
    cmds = h.timer()
    assert finish(cmds) == Finish("expired", 60.0, None)


def test_a_retry_due_while_draining_is_held_and_counts_nothing_for_the_breaker() -> None:
    health = HealthTracker()
    h = make(policy_text(a='retries = 1\nbreaker = { failures = 2, cooldown = "1m" }'), health=health)
    a = only_start(h.start(0.0))
    h.outcome(a, E500, 0.1)                        # one real failure; a retry of a is backing off
    h.d.drain()
    cmds = h.timer()                               # the back-off ends: the retry is held
    assert starts(cmds) == [] and [e.data["provider"] for e in events(cmds, "attempt_held")] == ["a"]
    assert health.snapshot()["a"]["failures"] == 1 and not health.is_open("a")
    assert not h.d.terminal and h.wakeup == 60.0


def test_an_attempt_in_flight_still_answers_while_draining() -> None:
    h = make()
    a = only_start(h.start(0.0))
    h.d.drain()
    assert finish(h.outcome(a, OK, 0.2)) == Finish("delivered", 0.2, 0.2)


def test_every_option_really_tried_still_finishes_while_draining() -> None:
    """Draining holds what would start; it does not keep a message whose options all ran (the sms
    channel is skipped: the recipient has no phone number, so it is no option)."""
    h = make(to={"email": "a@example.com"})
    a = only_start(h.start(0.0))
    b = only_start(h.outcome(a, E500, 0.1))
    h.d.drain()
    cmds = h.outcome(b, E500, 0.2)
    assert starts(cmds) == [] and h.d.held == 0
    assert finish(cmds) == Finish("undeliverable", 0.2, None)


def test_a_late_receipt_ends_a_held_provider_and_delivers() -> None:
    h = make(policy_text(a='confirm = "receipt"\nreceipt_timeout = "1s"'))
    a = only_start(h.start(0.0))
    h.outcome(a, OK, 0.1)                          # accepted; its receipt is due by 1.1
    h.d.drain()
    cmds = h.timer()                               # the receipt times out: failover to b is held
    assert starts(cmds) == [] and h.d.held == 1
    cmds = h.receipt(a, "delivered", 2.0)
    f = finish(cmds)
    assert f is not None and f.status == "delivered" and starts(cmds) == []


def test_rebase_moves_every_time_and_nothing_fires_earlier_or_later() -> None:
    health = HealthTracker()
    h = make(policy_text(a='retries = 1\nbreaker = { failures = 1, cooldown = "30s" }'), health=health)
    a = only_start(h.start(0.0))
    h.outcome(a, E500, 0.1)                        # opens a's breaker (until 30.1); a retry backs off
    wake = h.d.next_wakeup
    assert wake is not None and 0.1 < wake < 10.0
    h.d.rebase(3600.0)
    health.rebase(3600.0)
    assert h.d.next_wakeup == wake + 3600.0
    assert (h.d.accepted_at, h.d.message_deadline) == (3600.0, 3660.0)
    rec = h.d.attempts[a.attempt_id]
    assert (rec.started_at, rec.ended_at, rec.deadline) == (3600.0, 3600.1, 3602.0)
    assert health.blocks("a", 3630.0) and not health.blocks("a", 3630.2)
    cmds = h.timer()                               # the back-off ends at its moved time
    assert events(cmds, "provider_skipped") or starts(cmds)   # a is still open: skipped to b
    b = only_start(cmds)
    assert (b.provider, b.started_at, b.deadline) == ("b", wake + 3600.0, wake + 3602.0)


def test_clock_step_reanchors_only_past_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from routingd.daemon.clock import STEP_S, Clock

    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    c = Clock()
    assert c.step() == 0.0
    offset[0] = STEP_S / 4
    assert c.step() == 0.0
    before = c.now()
    offset[0] = 3600.0
    step = c.step()
    assert abs(step - 3600.0) < 0.05
    assert abs(c.now() - (before + step)) < 0.05 and abs(c.now() - time.time()) < 0.05
    assert c.step() == 0.0
