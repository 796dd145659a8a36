"""Per-provider circuit breakers (HealthTracker): closed -> open -> half-open probe -> closed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.health import HealthTracker

N, COOL = 3, 10.0


def fail(h: HealthTracker, p: str, now: float, n: int = 1) -> list[str | None]:
    return [h.record(p, False, N, COOL, now) for _ in range(n)]


def test_opens_after_n_consecutive_failures() -> None:
    h = HealthTracker()
    assert fail(h, "ses", 0.0, N - 1) == [None] * (N - 1)
    assert not h.is_open("ses") and h.allow("ses", N, COOL, 0.0)
    assert fail(h, "ses", 1.0) == ["opened"]
    assert h.is_open("ses")
    assert not h.allow("ses", N, COOL, 1.0)
    assert not h.allow("ses", N, COOL, 1.0 + COOL - 0.001)


def test_success_resets_the_consecutive_count() -> None:
    h = HealthTracker()
    fail(h, "ses", 0.0, N - 1)
    assert h.record("ses", True, N, COOL, 0.0) is None      # closed -> closed: no transition
    fail(h, "ses", 0.0, N - 1)
    assert not h.is_open("ses")


def test_half_open_lets_one_probe_through_per_cooldown() -> None:
    h = HealthTracker()
    fail(h, "ses", 0.0, N)
    assert h.allow("ses", N, COOL, COOL)           # the probe
    assert not h.allow("ses", N, COOL, COOL)       # nobody else while it runs
    assert not h.allow("ses", N, COOL, COOL + 5)
    # the probe vanished (cancelled, never recorded): another probe one cooldown later
    assert h.allow("ses", N, COOL, 2 * COOL)
    assert not h.allow("ses", N, COOL, 2 * COOL)


def test_blocks_says_what_allow_would_answer_without_consuming_the_probe() -> None:
    h = HealthTracker()
    assert not h.blocks("ses", 0.0)                 # never seen
    fail(h, "ses", 0.0, N - 1)
    assert not h.blocks("ses", 0.0)                 # closed
    fail(h, "ses", 1.0)
    assert h.blocks("ses", 1.0) and h.blocks("ses", 1.0 + COOL - 0.001)
    assert not h.blocks("ses", 1.0 + COOL)          # a probe is due ...
    assert not h.blocks("ses", 1.0 + COOL)          # ... and asking did not use it up
    assert h.allow("ses", N, COOL, 1.0 + COOL)      # the probe
    assert h.blocks("ses", 1.0 + COOL)              # nobody else while it runs
    assert h.record("ses", True, N, COOL, 2.0 + COOL) == "closed"
    assert not h.blocks("ses", 2.0 + COOL)


def test_probe_success_closes() -> None:
    h = HealthTracker()
    fail(h, "ses", 0.0, N)
    assert h.allow("ses", N, COOL, COOL)
    assert h.record("ses", True, N, COOL, COOL + 1) == "closed"
    assert not h.is_open("ses")
    assert all(h.allow("ses", N, COOL, COOL + 1) for _ in range(5))
    # closed again means N fresh failures are needed to re-open
    assert fail(h, "ses", COOL + 2, N) == [None] * (N - 1) + ["opened"]


def test_probe_failure_reopens_for_another_cooldown() -> None:
    h = HealthTracker()
    fail(h, "ses", 0.0, N)
    assert h.allow("ses", N, COOL, COOL)
    fail(h, "ses", COOL + 1)
    assert h.is_open("ses")
    assert not h.allow("ses", N, COOL, COOL + 1 + COOL - 0.001)
    assert h.allow("ses", N, COOL, COOL + 1 + COOL)


def test_breaker_off_never_skips() -> None:
    h = HealthTracker()
    for i in range(100):
        assert h.record("ses", False, None, 0.0, float(i)) is None
        assert h.allow("ses", None, 0.0, float(i))
    assert not h.is_open("ses")


def test_providers_are_independent() -> None:
    h = HealthTracker()
    fail(h, "ses", 0.0, N)
    assert h.is_open("ses") and not h.is_open("sendgrid")
    assert h.allow("sendgrid", N, COOL, 0.0)
    snap = h.snapshot()
    assert snap["ses"]["open"] is True and snap["ses"]["open_until"] == COOL
    assert "sendgrid" not in snap or snap["sendgrid"]["open"] is False


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "allow"]), st.floats(0, 5)), max_size=60),
       st.integers(1, 4), st.floats(0.5, 10))
def test_never_open_without_threshold_consecutive_failures(ops: list[tuple[str, float]], n: int, cool: float) -> None:
    """Model check: open iff the last `n` recorded results since the last success were failures."""
    h = HealthTracker()
    now = 0.0
    streak = 0
    for op, dt in ops:
        now += dt
        if op == "ok":
            h.record("p", True, n, cool, now)
            streak = 0
        elif op == "fail":
            h.record("p", False, n, cool, now)
            streak += 1
        else:
            blocked = h.blocks("p", now)
            allowed = h.allow("p", n, cool, now)
            assert blocked == (not allowed)
            if streak < n:
                assert allowed
        assert h.is_open("p") == (streak >= n)


# --------------------------------------------------------------------------- heard from another process


def test_heard_opened_opens_a_closed_breaker_for_this_process_cooldown_and_joins_the_worklist() -> None:
    h = HealthTracker()
    h.opened = []
    assert h.heard("p", True, N, COOL, 100.0) == "opened"
    assert h.opened == ["p"]
    assert h.blocks("p", 100.0) and not h.allow("p", N, COOL, 105.0)
    assert h.allow("p", N, COOL, 100.0 + COOL)          # its own cooldown, then a probe of its own
    assert h.record("p", True, N, COOL, 110.5) == "closed"


def test_heard_opened_leaves_an_open_or_probing_breaker_as_it_is() -> None:
    h = HealthTracker()
    fail(h, "p", 0.0, N)                                  # open until 10
    assert h.heard("p", True, N, COOL, 5.0) is None
    assert h.snapshot()["p"]["open_until"] == 10.0
    assert h.allow("p", N, COOL, 10.0)                    # the probe
    assert h.heard("p", True, N, COOL, 10.5) is None
    assert h.snapshot()["p"]["half_open"] is True


def test_heard_closed_closes_an_open_breaker_and_clears_a_closed_ones_failures() -> None:
    h = HealthTracker()
    fail(h, "p", 0.0, N)
    assert h.heard("p", False, N, COOL, 1.0) == "closed"
    assert h.allow("p", N, COOL, 1.0) and not h.is_open("p")
    fail(h, "q", 0.0, N - 1)
    assert h.heard("q", False, N, COOL, 1.0) is None
    assert fail(h, "q", 2.0) == [None]                   # counting from zero again


def test_heard_never_changes_a_breaker_that_is_off_here() -> None:
    h = HealthTracker()
    assert h.heard("p", True, None, COOL, 0.0) is None
    assert h.allow("p", None, COOL, 0.0) and not h.is_open("p")
