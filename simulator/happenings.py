"""What the SimPy driver (runner.py) puts on SimPy's queue, and its side of one message: compiled
with it (setup.py), so that the driver's handlers read them natively. Why the driver schedules
a `Due` rather than a Timeout: runner.py's module docstring."""

from __future__ import annotations

import math
from typing import Any, Callable

from ..daemon.core.engine import Delivery, StartAttempt


class Msg:
    """The driver's side of one message: its engine (`delivery`) and its one wake-up.

    gen     generation of the wanted wake-up: a scheduled one of an older generation is stale
    due     the SimPy time of a wanted wake-up held back, not scheduled yet (None: none held)
    at      the time the engine asked for with it
    anchor  the SimPy time of an answer or receipt of this message already on the queue, earlier
            than `due`, whose handling schedules `due` (None: none known)
    """

    __slots__ = ("i", "delivery", "gen", "due", "at", "anchor")

    def __init__(self, i: int, d: Delivery) -> None:
        self.i = i
        self.delivery = d
        self.gen = 0
        self.due: float | None = None
        self.at = 0.0
        self.anchor: float | None = None


def delay_to(now: float, t: float) -> float:
    """A delay d >= 0 with now + d == t exactly (t - now alone can miss t by an ulp)."""
    d = t - now
    for _ in range(64):
        s = now + d
        if s == t:
            return d
        d = math.nextafter(d, math.inf if s < t else -math.inf)
    return t - now      # pragma: no cover - within an ulp or two in practice


class Due:
    """One happening on SimPy's queue (see the module docstring); _Driver.later schedules it.

    callbacks   (the handler of its kind,): SimPy's step() calls it with the Due, then sets None
    _ok         True, read by SimPy's step() (a failed event would end the run)
    at          its SimPy time, computed as SimPy computes it (now + delay)
    msg         its message (None: an arrival, the limiter's turn)
    cmd         committed: the StartAttempt whose call goes out
    aid         answered, receipted: the attempt
    kind, status, retry_after, receipt      answered: the provider's draw, less its delay
    gen, asked  fire: the wake-up's generation and the time the engine asked for (limiter_due: asked)
    """

    __slots__ = ("_ok", "aid", "asked", "at", "callbacks", "cmd", "gen", "kind", "msg", "receipt", "retry_after",
                 "status")

    def __init__(self, callbacks: tuple[Callable[[Any], None]], msg: Msg | None) -> None:
        self.callbacks: tuple[Callable[[Any], None]] | None = callbacks
        self._ok = True
        self.at = 0.0
        self.msg = msg
        self.cmd: StartAttempt | None = None
        self.aid = ""
        self.kind = ""
        self.status: int | None = None
        self.retry_after: float | None = None
        self.receipt: float | None = None
        self.gen = 0
        self.asked = 0.0
