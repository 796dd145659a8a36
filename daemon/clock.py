"""The daemon's clock: wall-anchored monotonic seconds.

`now()` = the wall time when the clock was made + the monotonic time elapsed since. While the
process runs, deadlines therefore follow the monotonic clock (an NTP step or a manual date change
neither fires nor postpones a timeout), and the values still read as Unix seconds, so the
absolute deadlines stored in SQLite keep their meaning across a restart (the next process
anchors its own clock to the wall time again).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


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
