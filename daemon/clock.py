"""The daemon's clock: wall-anchored monotonic seconds that follow a step of the wall clock.

`now()` = the wall time at the anchor + the monotonic time elapsed since. Between two anchors,
deadlines therefore follow the monotonic clock, and the values read as Unix seconds, so the
absolute deadlines stored in SQLite keep their meaning across a restart (the next process
anchors its own clock to the wall time again).

A step of the wall clock while the process runs (NTP correcting it, `date -s`, a resume from
suspend) is seen by `step()`, which re-anchors to the wall clock and returns the step; the
Router then moves every time it holds by that much (engine Delivery.rebase), so the times it
stores go on following the wall clock while no deadline fires earlier or later than it would
have (docs/reliability.md "Clean restarts").
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

# A wall clock that moved this far from the anchored one has been stepped (ntpd steps past 128 ms;
# slewing moves the monotonic clock along with it). Smaller differences are left alone.
STEP_S = 0.5


class Clock:
    """Seconds since the Unix epoch, advancing with the monotonic clock."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)

    def monotonic(self, at: float) -> float:
        """The `time.monotonic()` value (asyncio's loop clock) at which `now()` reaches `at`."""
        return self._mono0 + (at - self._wall0)

    def step(self) -> float:
        """How far the wall clock stepped from `now()` since the anchor; past STEP_S, the clock is
        re-anchored to it (now() jumps by the step) and the step returned, else 0.0."""
        for _ in range(3):          # a read pair split by a preemption would look like a step
            m1 = time.monotonic()
            wall = time.time()
            m2 = time.monotonic()
            if m2 - m1 < 0.01:
                break
        else:
            return 0.0
        delta = wall - (self._wall0 + ((m1 + m2) / 2 - self._mono0))
        if abs(delta) < STEP_S:
            return 0.0
        self._wall0 += delta
        return delta


LATEST = "9999-12-31T23:59:59.999Z"
EARLIEST = "0001-01-01T00:00:00.000Z"


def rfc3339(t: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC with milliseconds: 2026-11-21T21:42:15.123Z.

    Saturates instead of raising: a time past year 9999 (a policy may hold a timeout so long that
    its deadline is past every date a datetime can hold, "99999999h") is LATEST -- "never", not
    an error -- and one before year 1 (or NaN) is EARLIEST. Used by the status endpoint and the
    MQTT event formatter."""
    if t is None:
        return None
    try:
        dt = datetime.fromtimestamp(t, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return LATEST if t > 0 else EARLIEST
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
