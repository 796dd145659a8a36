"""The wake-ups (SetTimer) of every message: one heap served by one loop timer."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Callable, Hashable, Iterable, Mapping

from ..clock import Clock
from .base import _Live

log = logging.getLogger("routingd.runtime")

_EARLY_S = 0.0001             # a wake-up this close to due is run (see on_wakeups)


class WakeupHeap:
    """A heap of (at, seq, message_id) served by ONE loop timer for its earliest entry. An entry
    is live while its message's wake_seq is its seq; replaced and finished ones are skipped when
    due, and dropped in bulk when they are the majority. Cheaper than a TimerHandle made and
    cancelled per message.

    live_of: the pending messages by id (the Fleet's set); due(live, at): hand a due wake-up to
    the engine (the Router's). `loop` is set when the Router starts; halt() when it stops."""

    def __init__(self, clock: Clock, live_of: Mapping[Hashable, _Live], due: Callable[[_Live, float], None]) -> None:
        self._clock = clock
        self._live_of = live_of
        self._due = due
        self.loop: asyncio.AbstractEventLoop | None = None
        self._halted = False
        self._wakeups: list[tuple[float, int, str]] = []
        self._wake_seq = itertools.count()
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._stale = 0

    def set_timer(self, live: _Live, at: float | None) -> None:
        if live.wake_seq >= 0:
            live.wake_seq = -1
            self._stale += 1
        if at is None or live.finished or self._halted:
            return
        seq = next(self._wake_seq)
        live.wake_seq = seq
        heapq.heappush(self._wakeups, (at, seq, live.row.id))
        if self._wake_at is None or at < self._wake_at:   # (-inf while on_wakeups runs)
            self._arm(at)
        if self._stale > 1024 and self._stale * 2 > len(self._wakeups):
            self._compact_wakeups()

    def drop(self, live: _Live) -> None:
        """The message finished: its entry, if any, is skipped when due."""
        if live.wake_seq >= 0:
            live.wake_seq = -1
            self._stale += 1

    def halt(self, lives: Iterable[_Live]) -> None:
        """The Router stopped: no wake-up fires or is armed again."""
        self._halted = True
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = self._wake_at = None
        self._wakeups.clear()
        for live in lives:
            live.wake_seq = -1

    def rebase(self, delta: float) -> None:
        """The wall clock stepped by delta (runtime/housekeeping.py): every wake-up moves with it."""
        if self._wakeups:
            self._wakeups = [(at + delta, seq, mid) for at, seq, mid in self._wakeups]   # still a heap
            if self._wake_handle is not None:
                self._arm(self._wakeups[0][0])

    def _arm(self, at: float) -> None:
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        assert self.loop is not None
        self._wake_at = at
        self._wake_handle = self.loop.call_later(max(0.0, at - self._clock.now()), self._on_wakeups)

    def _compact_wakeups(self) -> None:
        live_of = self._live_of
        kept = [e for e in self._wakeups if (lv := live_of.get(e[2])) is not None and lv.wake_seq == e[1]]
        heapq.heapify(kept)
        self._wakeups = kept
        self._stale = 0

    def _on_wakeups(self) -> None:
        self._wake_handle = self._wake_at = None
        if self._halted:
            return
        heap = self._wakeups
        live_of = self._live_of
        # asyncio may run a handle a hair early (and the wall-anchored clock rounds): what is due
        # within _EARLY_S counts as due, and the engine sees its own deadline as reached. Wake-ups
        # asked for while these run are served by the next timer, never in this loop.
        now = self._clock.now()
        due: list[tuple[float, _Live]] = []
        while heap and heap[0][0] <= now + _EARLY_S:
            at, seq, mid = heapq.heappop(heap)
            live = live_of.get(mid)
            if live is None or live.wake_seq != seq:
                self._stale = max(0, self._stale - 1)
                continue
            live.wake_seq = -1
            due.append((at, live))
        self._wake_at = float("-inf")          # set_timer: do not arm while the due ones run
        try:
            for at, live in due:
                if not live.finished and not self._halted and live.wake_seq < 0:
                    try:
                        self._due(live, at)
                    except Exception:  # noqa: BLE001 - one message's failure must not stall the others
                        log.exception("handling the wake-up of %s failed", live.row.id)
        finally:
            self._wake_at = None
            if heap and not self._halted:
                self._arm(heap[0][0])
