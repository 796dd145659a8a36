"""Durations as routing.toml writes them: "250ms", "10s", "5m", "72h", "1m30s" or integer ms."""

from __future__ import annotations

import re

from .errors import RoutingdError

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


MAX_DURATION_MS = 1000 * 365 * 86_400_000     # 1000 years: beyond it a float loses whole ms


class DurationError(RoutingdError, ValueError):
    """A duration that cannot be read."""


def parse_duration_ms(value: object) -> int:
    """Return a duration in whole milliseconds.

    Accepts a non-negative integer (milliseconds) or a string of one or more
    number+unit parts ("250ms", "1.5s", "1m30s"). Anything else raises DurationError
    with a message a user can act on.
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration like \"10s\" or an integer of milliseconds, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise DurationError(f"duration must not be negative, got {value}")
        if value >= MAX_DURATION_MS:
            raise DurationError(f"duration {value} ms is too large; the longest is 1000 years")
        return value
    if isinstance(value, float):
        if value < 0 or value != value or value == float("inf"):
            raise DurationError(f"duration must be a finite non-negative number, got {value}")
        if value >= MAX_DURATION_MS:
            raise DurationError(f"duration {value:g} ms is too large; the longest is 1000 years")
        return int(round(value))
    if not isinstance(value, str):
        raise DurationError(f"expected a duration like \"10s\" or an integer of milliseconds, got {value!r}")
    text = value.strip().replace(" ", "")
    if not text:
        raise DurationError("empty duration; write e.g. \"250ms\", \"10s\", \"5m\" or \"72h\"")
    pos = 0
    total = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos == len(text) and pos and not total < MAX_DURATION_MS:
        raise DurationError(f"duration {value[:40]!r} is too large; the longest is 1000 years")
    if pos != len(text) or pos == 0:
        raise DurationError(
            f"bad duration {value!r}; write a number with a unit ms, s, m, h or d (\"250ms\", \"10s\", \"1m30s\")"
        )
    return int(round(total))


def format_duration_ms(ms: int) -> str:
    """The shortest exact string form of a duration ("90s" -> "1m30s")."""
    if ms == 0:
        return "0s"
    out = []
    rest = ms
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        q, rest = divmod(rest, size)
        if q:
            out.append(f"{q}{unit}")
    return "".join(out)
