"""The limiter's queue (daemon/core/limiter.py) makes the very decisions of the straightforward
algorithm it replaced -- every request a count over the whole queue, every due() a sort of it --
while costing O(log n) per message (a heap, lazy deletion, per-priority counts).

`_Reference` below is that straightforward algorithm, kept only here. Hypothesis drives both with
the same random sequence of requests, cancels, releases, 429s, changes of this process's share
of the limit and time steps and compares every
answer. Times, rates and bursts are dyadic (multiples of 1/8, powers of two) so both compute every
turn exactly: the new queue skips re-checking turns that cannot have moved, and where a turn lies
within float rounding of a deadline the two could otherwise differ by that rounding.
"""

from __future__ import annotations

from heapq import heappush
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.limiter import GO, SPILL, Limit, Limiter, TokenBucket, Waiter, shared


class _Reference:
    """The old Limiter for one provider: a list, rescanned and re-sorted on every call."""

    def __init__(self, limit: Limit, now: float, live: Any) -> None:
        self.limit = limit
        self.bucket = TokenBucket(limit.rate, limit.depth(), now) if limit.rate is not None else None
        self.inflight = 0
        self.queue: list[Waiter] = []
        self.seq = 0
        self.live = live

    def _free(self, now: float) -> bool:
        mi = self.limit.max_inflight
        if mi is not None and self.inflight >= mi:
            return False
        if self.bucket is not None and not self.bucket.take(now):
            return False
        self.inflight += 1
        return True

    def _turn(self, ahead: int, now: float) -> float:
        return now if self.bucket is None else self.bucket.time_for(ahead + 1, now)

    def request(self, ref: Any, priority: int, now: float, latest: float) -> tuple[int, float]:
        self.queue = [w for w in self.queue if self.live(w)]
        ahead = sum(1 for w in self.queue if w.priority >= priority)
        if ahead == 0 and self._free(now):
            return GO, now
        turn = self._turn(ahead, now)
        if turn >= latest:
            return SPILL, turn
        self.seq += 1
        heappush(self.queue, Waiter(priority, self.seq, None, ref, now, latest))
        return 1, max(turn, now)

    def due(self, now: float) -> list[tuple[Any, bool, float]]:
        out: list[tuple[Any, bool, float]] = []
        q = sorted(w for w in self.queue if self.live(w))
        while q and q[0].latest < now:
            w = q.pop(0)
            out.append((w.ref, False, now - w.arrived))
        while q and self._free(now):
            out.append((q.pop(0).ref, True, 0.0))
        keep: list[Waiter] = []
        if self.bucket is not None:
            for w in q:
                turn = self._turn(len(keep), now)
                if turn >= w.latest:
                    out.append((w.ref, False, turn - now))
                else:
                    keep.append(w)
            q = keep
        self.queue = q
        return out

    def throttled(self, now: float, retry_after_s: float | None) -> None:
        if self.bucket is not None:
            self.bucket.throttle(now, retry_after_s if retry_after_s else 1.0)

    def set_share(self, share: float, now: float) -> None:
        if self.bucket is not None and self.limit.rate is not None:
            self.bucket.rescale(*shared(self.limit.rate, self.limit.depth(), share), now)

    def release(self) -> None:
        if self.inflight > 0:
            self.inflight -= 1


_eighths = st.integers(0, 80).map(lambda n: n / 8.0)
_op = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 3), _eighths),      # priority, latest - now
    st.tuples(st.just("cancel"), st.integers(0, 10_000), st.just(0.0)),
    st.tuples(st.just("step"), st.integers(0, 16), st.just(0.0)),     # eighths of a second
    st.tuples(st.just("release"), st.just(0), st.just(0.0)),
    st.tuples(st.just("throttle"), st.sampled_from([0, 1, 2, 4]), st.just(0.0)),
    st.tuples(st.just("share"), st.sampled_from([1, 2, 4]), st.just(0.0)),    # 1/N of the limit
)


@settings(max_examples=500, deadline=None)
@given(rate=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0])),
       burst=st.sampled_from([1.0, 2.0, 3.0]),
       max_inflight=st.one_of(st.none(), st.integers(1, 3)),
       ops=st.lists(_op, max_size=120))
def test_the_heap_decides_exactly_as_the_straightforward_scan(
        rate: float | None, burst: float, max_inflight: int | None, ops: list[tuple[str, int, float]]) -> None:
    if rate is None and max_inflight is None:
        max_inflight = 1
    limit = Limit(rate=rate, burst=burst if rate is not None else None, max_inflight=max_inflight)
    dead: set[int] = set()
    live = lambda w: w.ref not in dead      # noqa: E731 - the engine's predicate: the run still waits
    ref = _Reference(limit, 0.0, live)
    lim = Limiter({"p": limit}, 0.0)
    lim.live = live
    queued: list[int] = []
    now = 0.0
    n = 0
    for kind, a, b in ops:
        if kind == "request":
            n += 1
            want = ref.request(n, a, now, now + b)
            got = lim.request("p", None, n, a, now, now + b)
            assert got == want
            if got[0] not in (GO, SPILL):
                queued.append(n)
        elif kind == "cancel":
            if queued:
                gone = queued.pop(a % len(queued))
                dead.add(gone)
                lim.cancel("p", gone)
        elif kind == "release":
            ref.release()
            lim.release("p")
        elif kind == "share":
            ref.set_share(1.0 / a, now)
            lim.set_share(1.0 / a, now)
        elif kind == "throttle":
            ref.throttled(now, float(a) or None)
            lim.on_throttled("p", now, float(a) or None)
        else:
            now += a / 8.0
        want_due = ref.due(now)
        got_due = [(w.ref, granted, wait) for w, _p, granted, wait in lim.due(now)]
        assert got_due == want_due, (now, kind)
        for r, _g, _w in got_due:
            dead.add(r)                     # handed out: its run no longer waits
        queued = [q for q in queued if q not in dead]
        assert lim.snapshot(now)["p"]["queue"] == len(queued)


def test_cancelled_waiters_are_compacted_away() -> None:
    """Lazy deletion must not let a queue of mostly cancelled waiters grow without bound."""
    lim = Limiter({"p": Limit(rate=1.0, burst=1.0)}, 0.0)
    assert lim.request("p", None, "first", 0, 0.0, 1e9)[0] == GO
    runs = [object() for _ in range(1000)]          # the engine's refs are its run objects
    for r in runs:
        lim.request("p", None, r, 0, 0.0, 1e9)
    for r in runs[:990]:
        lim.cancel("p", r)
    p = lim._p["p"]
    assert p.live_n == 10 and len(p.queue) < 200
    # the survivors keep their order; the first one's turn is one token on
    granted = [w.ref for w, _p, g, _wait in lim.due(1.0) if g]
    assert granted == [runs[990]]
