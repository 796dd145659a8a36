"""Durations as routing.toml writes them: strings with units, compound strings, integer ms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.durations import DurationError, format_duration_ms, parse_duration_ms


@pytest.mark.parametrize("text, ms", [
    ("250ms", 250),
    ("0ms", 0),
    ("0s", 0),
    ("10s", 10_000),
    ("1.5s", 1_500),
    ("5m", 300_000),
    ("72h", 72 * 3_600_000),
    ("2d", 2 * 86_400_000),
    ("1m30s", 90_000),
    ("1h2m3s4ms", 3_723_004),
    ("1s500ms", 1_500),
    (" 10s ", 10_000),
    ("1m 30s", 90_000),
])
def test_strings(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("value, ms", [(0, 0), (1, 1), (250, 250), (86_400_000, 86_400_000), (2.0, 2)])
def test_numbers_are_milliseconds(value: object, ms: int) -> None:
    assert parse_duration_ms(value) == ms


@pytest.mark.parametrize("value, fragment", [
    ("", "empty duration"),
    ("   ", "empty duration"),
    ("10", "bad duration"),          # a string needs a unit; a bare number must be an integer
    ("s", "bad duration"),
    ("10x", "bad duration"),
    ("10sec", "bad duration"),
    ("ten seconds", "bad duration"),
    ("-5s", "bad duration"),
    ("1m30", "bad duration"),
    ("s10", "bad duration"),
    ("1.5.2s", "bad duration"),
    (-1, "must not be negative"),
    (-0.5, "non-negative"),
    (float("nan"), "non-negative"),
    (float("inf"), "non-negative"),
    (True, "expected a duration"),
    (None, "expected a duration"),
    ([10], "expected a duration"),
    ({"s": 1}, "expected a duration"),
])
def test_bad_durations_raise_with_a_usable_message(value: object, fragment: str) -> None:
    with pytest.raises(DurationError) as e:
        parse_duration_ms(value)
    assert fragment in str(e.value)
    assert isinstance(e.value, ValueError)   # pydantic turns ValueErrors into validation errors


def test_bad_duration_message_shows_the_accepted_forms() -> None:
    with pytest.raises(DurationError, match=r"'10x'.*ms, s, m, h or d"):
        parse_duration_ms("10x")


@pytest.mark.parametrize("ms, text", [
    (0, "0s"), (1, "1ms"), (250, "250ms"), (1_000, "1s"), (1_500, "1s500ms"), (90_000, "1m30s"),
    (3_600_000, "1h"), (72 * 3_600_000, "72h"), (3_723_004, "1h2m3s4ms"),
])
def test_format(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10 * 365 * 86_400_000))
def test_format_then_parse_round_trips(ms: int) -> None:
    assert parse_duration_ms(format_duration_ms(ms)) == ms


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(["ms", "s", "m", "h", "d"])),
                min_size=1, max_size=5))
def test_compound_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    size = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration_ms(text) == sum(n * size[u] for n, u in parts)
