"""Outbound rate limits and priorities: one `Limiter` per fleet, shared by every message (sans-IO).

(Over 400 lines on purpose: the queue -- a heap with lazy deletion and the turn checks -- and the
decisions that read it are one data structure with one set of invariants; the token buckets it
uses are bucket.py.)

A provider with `rate_limit` (a token bucket: `rate` per second, up to `burst` tokens saved up)
and/or `max_inflight` (calls in flight at once) in routing.toml is *limited*
(docs/configuration.md "Rate limits and priorities"). The engine asks for a slot where it would
start an attempt on one (walk.py try_run, like it asks the breakers through HealthTracker.allow):

  * `request(...)` answers GO when the slot is free (a token taken, a call counted in flight):
    the attempt starts at once;
  * QUEUED and a later time T, the *expected* turn, when the message has to queue: the run waits (state
    QUEUED) until the fleet hands it its slot (Fleet.dispatch -> Delivery.on_slot). The wait is
    engine time like any other, so its channel and message deadlines keep running;
  * SPILL when that turn would come at or after `latest` (what the engine computed from the channel
    deadline): the message spills over at once (event provider_spilled) instead of waiting into
    a timeout.

Waiters are served highest priority first, equal priority first come, first served. A waiter
whose expected turn slips past its `latest` (more urgent messages arrived after it, or a 429
lowered the rate) is handed back by `due()` as a spill, so no message waits past a deadline
because of the limiter. The drivers call `release(provider)` when a call ends (its answer, a
network error, a cancel), which frees a max_inflight place.

Cost: O(log n) per message for n queued (a heap keyed by priority then arrival; a waiter whose
run stops waiting -- the engine says so through `cancel()` -- is marked dead and skipped where
popped, the heap compacted once the dead outnumber the live). Each waiter's turn is checked
against its `latest` when it queues and again, all of them, only after something pushed turns
later (see _Provider.dirty: a more urgent arrival ahead of waiters, a 429, a lower share, tokens
lost to a full bucket, a reload; that check is O(n log n), as every call was before).
tests/test_limiter_queue.py shows the decisions are exactly those of the plain algorithm that
re-counted and re-sorted the whole queue on every call (with exact arithmetic: a turn within
float rounding of a deadline could be judged either way by either); benchmarks/bench_limiter.py
measures the cost (docs/performance.md "Rate limiter queue").

Adaptive: a vendor's 429 (with Retry-After, else one second) lowers the bucket's rate to half
for that long (`on_throttled`), so routingd converges on the vendor's real limit when the
configured one is too high. Several processes on one database split each limit: `set_share(1/N)`
keeps that part of every rate and burst (daemon/cluster.py counts N at each lease renewal;
docs/scaling.md "Rate limits across processes"). The buckets, and `Pacer`, which keeps the same
rate and burst where the daemon's calls leave (after their commit; daemon/adapters.py
PacingGate), are in bucket.py. Pure Python, not compiled (docs/architecture.md "The compiled
core").
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Any, Callable, Iterable, Mapping

from .bucket import (THROTTLE_DEFAULT_S, THROTTLE_FACTOR, TOKEN_EPSILON, Limit,  # noqa: F401 - re-exported
                     Pacer, TokenBucket, shared)

# request()'s verdicts
GO = 0
QUEUED = 1
SPILL = 2


@dataclass(eq=False)
class Waiter:
    """One queued run: the driver's key for the message, the engine's reference to the run."""

    priority: int
    seq: int
    key: Any
    ref: Any
    arrived: float
    latest: float
    dead: bool = False      # cancelled (Limiter.cancel) or found not live: skipped where popped

    def __lt__(self, other: "Waiter") -> bool:
        if self.priority != other.priority:
            return self.priority > other.priority
        return self.seq < other.seq


# Compact a provider's heap (drop the dead waiters still in it) when they outnumber the live
# ones and are at least this many: each compaction is paid for by the cancels since the last.
COMPACT_MIN = 64


class _Provider:
    __slots__ = ("limit", "bucket", "inflight", "queue", "spilled", "throttled", "granted", "waited_s",
                 "counts", "by_ref", "live_n", "dead_n", "dirty")

    def __init__(self, limit: Limit, now: float, share: float = 1.0) -> None:
        self.limit = limit
        self.bucket: TokenBucket | None = None
        if limit.rate is not None:
            self.bucket = TokenBucket(*shared(limit.rate, limit.depth(), share), now)
        self.inflight = 0
        # a heap (Waiter.__lt__: priority, then arrival) of live waiters and of dead ones not
        # popped yet (lazy deletion: a cancel marks its waiter, costing O(1))
        self.queue: list[Waiter] = []
        self.counts: dict[int, int] = {}    # priority -> live waiters at it (few priorities)
        self.by_ref: dict[int, Waiter] = {} # id(run) -> its live waiter, for cancel()
        self.live_n = 0
        self.dead_n = 0
        # Something may have pushed a waiter's turn later since the last full check (a more urgent
        # arrival ahead of it, a token taken by a newcomer, a 429, tokens lost to a full bucket,
        # a reload): due() checks every waiter's turn against its latest only then. Otherwise a
        # waiter's turn stays where request() found it before its latest (each grant takes one
        # token and moves every waiter one place up), so the check would spill nobody.
        self.dirty = False
        self.spilled = 0
        self.throttled = 0                 # 429s seen
        self.granted = 0
        self.waited_s = 0.0                # total time granted waiters waited

    def adopt(self, prev: "_Provider") -> None:
        """Take over a reloaded provider's queue and calls in flight (its limit changed)."""
        self.inflight, self.spilled, self.throttled = prev.inflight, prev.spilled, prev.throttled
        self.queue, self.counts, self.by_ref = prev.queue, prev.counts, prev.by_ref
        self.live_n, self.dead_n = prev.live_n, prev.dead_n
        self.dirty = True

    def push(self, w: Waiter) -> None:
        heappush(self.queue, w)
        self.counts[w.priority] = self.counts.get(w.priority, 0) + 1
        self.by_ref[id(w.ref)] = w
        self.live_n += 1

    def forget(self, w: Waiter) -> None:
        """`w` leaves the live set (popped, or marked dead and left in the heap)."""
        self.counts[w.priority] -= 1
        if self.by_ref.get(id(w.ref)) is w:
            del self.by_ref[id(w.ref)]
        self.live_n -= 1

    def ahead(self, priority: int) -> int:
        """Live waiters that go before a newcomer at `priority` (O(number of priorities))."""
        return sum(c for pr, c in self.counts.items() if pr >= priority)

    def behind(self, priority: int) -> bool:
        """Does a live waiter wait at a priority below `priority` (it would be passed)?"""
        return any(c for pr, c in self.counts.items() if pr < priority)


class Limiter:
    """Every limited provider's bucket, calls in flight and queue, for one fleet.

    Cost: request(), cancel() and a grant or spill in due() are O(log n + P) for n waiters and P
    distinct priorities (a heap, lazy deletion of dead waiters, per-priority counts). The full
    check of every waiter's turn (O(n log n)) runs in due() only after something moved turns
    later (see _Provider.dirty), as the old scan did on every call."""

    def __init__(self, limits: Mapping[str, Limit] | None = None, now: float = 0.0) -> None:
        self._p: dict[str, _Provider] = {}
        self._seq = 0
        self._freed: list[Waiter] = []
        # this process's part of every rate limit: 1 / the live processes sharing the database
        # (daemon/cluster.py; docs/scaling.md "Rate limits across processes")
        self.share = 1.0
        # a run's waiter is live while this says so (the engine: the run is still QUEUED);
        # a waiter that is not any more (its channel ended meanwhile) is dropped, costing nothing.
        # The engine also says so at once (cancel()); this catches any leave it did not report.
        self.live: Callable[[Waiter], bool] = lambda w: True
        self.configure(limits or {}, now)

    def configure(self, limits: Mapping[str, Limit], now: float) -> None:
        """Set the limits (a reload): a provider whose limit is unchanged keeps its state; one
        whose limit changed gets a fresh bucket but keeps its queue and its calls in flight."""
        old = self._p
        self._p = {}
        for name, lim in limits.items():
            if lim.rate is None and lim.max_inflight is None:
                continue
            prev = old.get(name)
            if prev is not None and prev.limit == lim:
                self._p[name] = prev
                continue
            p = _Provider(lim, now, self.share)
            if prev is not None:
                p.adopt(prev)
            self._p[name] = p
        # a provider no longer limited: its waiters go at once (due() hands them out)
        self._freed = [w for name, p in old.items() if name not in self._p
                       for w in sorted(p.queue) if not w.dead]

    def set_share(self, share: float, now: float) -> None:
        """Keep `share` (0 < share <= 1) of each configured rate_limit and burst from `now` on:
        the processes sharing one database split each limit among the live ones (daemon/cluster.py
        sets 1/N at each lease renewal). Waiters keep their places; a lower rate may push their
        turns past their deadlines (they spill at the next due()). max_inflight is not split."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a process's share of a rate limit is in (0, 1], not {share!r}")
        if share == self.share:
            return
        self.share = share
        for p in self._p.values():
            b = p.bucket
            if b is not None and p.limit.rate is not None:
                b.rescale(*shared(p.limit.rate, p.limit.depth(), share), now)
                p.dirty = True

    @property
    def waiting(self) -> bool:
        """Is any run queued (or freed by a reload, to be handed out)?"""
        return bool(self._freed) or any(p.live_n for p in self._p.values())

    def limited(self, provider: str) -> bool:
        return provider in self._p

    def limit(self, provider: str) -> Limit | None:
        p = self._p.get(provider)
        return None if p is None else p.limit

    def rate_limited(self, provider: str) -> bool:
        """Has `provider` an outbound rate_limit (a token bucket, not only max_inflight)?"""
        p = self._p.get(provider)
        return p is not None and p.bucket is not None

    def _free(self, p: _Provider, now: float) -> bool:
        """May a call start now (a place in flight, a token)? Takes the token if so."""
        mi = p.limit.max_inflight
        if mi is not None and p.inflight >= mi:
            return False
        if p.bucket is not None and not p.bucket.take(now):
            return False
        p.inflight += 1
        p.granted += 1
        return True

    def _turn(self, p: _Provider, ahead: int, now: float) -> float:
        """The expected start of the waiter with `ahead` live waiters before it (tokens only:
        when calls in flight will end is not known, so max_inflight counts as no wait)."""
        if p.bucket is None:
            return now
        return p.bucket.time_for(ahead + 1, now)

    def _top(self, p: _Provider) -> Waiter | None:
        """The first live waiter (dead ones on top are popped: lazy deletion)."""
        q = p.queue
        while q:
            w = q[0]
            if w.dead:
                heappop(q)
                p.dead_n -= 1
                continue
            if not self.live(w):        # left without cancel(): dropped here
                heappop(q)
                p.forget(w)
                continue
            return w
        return None

    def _pop(self, p: _Provider) -> Waiter:
        w = heappop(p.queue)
        p.forget(w)
        return w

    def request(self, provider: str, key: Any, ref: Any, priority: int, now: float,
                latest: float) -> tuple[int, float]:
        """Ask for a slot on `provider` at `now` (see the module doc): (GO, now), (QUEUED, the
        expected turn) or (SPILL, the expected turn, after `latest`)."""
        p = self._p.get(provider)
        if p is None:
            return GO, now
        self._top(p)
        ahead = p.ahead(priority)
        if ahead == 0 and self._free(p, now):
            if p.live_n:
                p.dirty = True          # a token the waiters counted on went to this newcomer
            return GO, now
        turn = self._turn(p, ahead, now)
        if turn >= latest:
            p.spilled += 1
            return SPILL, turn
        if p.live_n == 0 and p.bucket is not None:
            p.bucket.clamped = False    # tokens lost while nobody waited cost nobody a turn
        elif p.behind(priority):
            p.dirty = True              # it goes before waiters already queued: their turns slip
        self._seq += 1
        p.push(Waiter(priority, self._seq, key, ref, now, latest))
        return QUEUED, max(turn, now)

    def cancel(self, provider: str, ref: Any) -> None:
        """`ref`'s run stopped waiting on `provider` (its channel or message ended): its waiter is
        dead, skipped where popped. O(1), the heap compacted when the dead outnumber the live."""
        p = self._p.get(provider)
        if p is None:
            return
        w = p.by_ref.get(id(ref))
        if w is None or w.ref is not ref:
            return
        p.forget(w)
        w.dead = True
        p.dead_n += 1
        if p.dead_n >= COMPACT_MIN and p.dead_n > p.live_n:
            p.queue = [x for x in p.queue if not x.dead]
            heapify(p.queue)
            p.dead_n = 0

    def expected_wait(self, provider: str, priority: int, now: float) -> float:
        """How long a new request at `priority` would wait for its turn (0: it would go now)."""
        p = self._p.get(provider)
        if p is None:
            return 0.0
        self._top(p)
        return self._turn(p, p.ahead(priority), now) - now

    def due(self, now: float) -> list[tuple[Waiter, str, bool, float]]:
        """The waiters whose turn is now, in order: (waiter, provider, granted, expected wait).
        granted: the slot is theirs (a token taken, a call counted in flight). Not granted: a
        spill, their expected turn has slipped past their `latest`."""
        out: list[tuple[Waiter, str, bool, float]] = []
        freed, self._freed = self._freed, []
        for w in freed:
            if self.live(w):
                out.append((w, "", True, 0.0))
        for name, p in self._p.items():
            w0 = self._top(p)
            while w0 is not None and w0.latest < now:
                w = self._pop(p)        # (float rounding) its turn came after all it could wait
                p.spilled += 1
                out.append((w, name, False, now - w.arrived))
                w0 = self._top(p)
            while w0 is not None and self._free(p, now):
                w = self._pop(p)
                p.waited_s += now - w.arrived
                out.append((w, name, True, 0.0))
                w0 = self._top(p)
            b = p.bucket
            if w0 is None or b is None:
                p.dirty = False
                if b is not None:
                    b.clamped = False
                continue
            b.refill(now)
            if not (p.dirty or b.clamped):
                self._check_stalled(p, name, now, out)
                continue
            p.dirty = b.clamped = False
            # what is left waits: does each one's turn still come before its latest?
            order = sorted(w for w in p.queue if not w.dead and self.live(w))
            keep: list[Waiter] = []
            for w in order:
                turn = self._turn(p, len(keep), now)
                if turn >= w.latest:
                    p.spilled += 1
                    p.forget(w)
                    out.append((w, name, False, turn - now))
                else:
                    keep.append(w)
            for w in p.queue:           # the ones found not live above leave the live set too
                if not w.dead and not self.live(w):
                    p.forget(w)
            p.queue = keep              # sorted: a heap already
            p.dead_n = 0
        return out

    def _check_stalled(self, p: _Provider, name: str, now: float,
                       out: list[tuple[Waiter, str, bool, float]]) -> None:
        """Held back by max_inflight with tokens in the bucket, the first waiters' expected turn
        is `now` (tokens only count): it moves with the clock, so each is checked against its
        latest. A later waiter's turn is a token's time, fixed since it was last checked. O(burst
        log n)."""
        mi = p.limit.max_inflight
        if mi is None or p.inflight < mi:
            return
        keep: list[Waiter] = []
        q = p.queue
        while True:
            w = self._top(p)
            if w is None:
                break
            turn = self._turn(p, len(keep), now)
            if turn > now:
                break
            heappop(q)
            if turn >= w.latest:
                p.spilled += 1
                p.forget(w)
                out.append((w, name, False, turn - now))
            else:
                keep.append(w)
        for w in keep:
            heappush(q, w)

    def next_at(self, now: float) -> float | None:
        """When to call due() again at the latest (a token for a waiter), None: only on release."""
        best: float | None = None
        if self._freed:
            return now
        for p in self._p.values():
            if not p.live_n:
                continue
            mi = p.limit.max_inflight
            if mi is not None and p.inflight >= mi:
                continue            # a release will call due()
            t = now if p.bucket is None else p.bucket.time_for(1.0, now)
            if best is None or t < best:
                best = t
        return best

    def release(self, provider: str) -> None:
        """A call on `provider` has ended (answered, failed, cancelled): one fewer in flight."""
        p = self._p.get(provider)
        if p is not None and p.inflight > 0:
            p.inflight -= 1

    def refund(self, provider: str, now: float) -> None:
        """A granted slot was not used (the message moved on before it started): give it back."""
        p = self._p.get(provider)
        if p is None:
            return
        if p.inflight > 0:
            p.inflight -= 1
        if p.bucket is not None:
            p.bucket.refill(now)
            p.bucket.tokens = min(p.bucket.burst, p.bucket.tokens + 1.0)

    def requeue(self, provider: str, w: Waiter) -> None:
        """Put a waiter handed out by due() back in its place (its message was not ready for it)."""
        p = self._p.get(provider)
        if p is not None:
            p.push(w)
            p.dirty = True

    def on_throttled(self, provider: str, now: float, retry_after_s: float | None) -> None:
        """The vendor answered 429: lower the rate for Retry-After (or THROTTLE_DEFAULT_S)."""
        p = self._p.get(provider)
        if p is None:
            return
        p.throttled += 1
        if p.bucket is not None:
            p.bucket.throttle(now, retry_after_s if retry_after_s is not None and retry_after_s > 0
                              else THROTTLE_DEFAULT_S)
            p.dirty = True

    def rebase(self, delta: float) -> None:
        for p in self._p.values():
            b = p.bucket
            if b is not None:
                b.at += delta
                if b.throttled_until is not None:
                    b.throttled_until += delta
            for w in p.queue:           # the dead too: harmless, and no scan of liveness
                w.arrived += delta
                w.latest += delta

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """Per limited provider: the limit, the live queue, calls in flight, spills, 429s seen."""
        out: dict[str, dict[str, Any]] = {}
        for name, p in self._p.items():
            b = p.bucket
            if b is not None:
                b.refill(now)
            queued = sum(1 for w in p.queue if not w.dead and self.live(w))
            # rate_limit and burst as configured (the deployment's); rate_now and burst_now this
            # process's bucket (its share, and half the rate for a while after a vendor's 429)
            out[name] = {"rate_limit": p.limit.rate, "burst": None if b is None else p.limit.depth(),
                         "max_inflight": p.limit.max_inflight, "rate_now": None if b is None else b.rate,
                         "burst_now": None if b is None else b.burst, "share": self.share,
                         "queue": queued, "inflight": p.inflight, "spilled": p.spilled,
                         "throttled": p.throttled, "granted": p.granted, "waited_s": p.waited_s}
        return out

    def providers(self) -> Iterable[str]:
        return self._p.keys()
