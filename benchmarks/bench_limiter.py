"""The outbound rate limiter's cost per message as its queue grows (daemon/core/limiter.py).

Subject: a Limiter whose provider's queue holds n waiters (n = 100, 1,000, 10,000) in steady
state: per message one request() (it queues at the tail) and one due() a token later (the head
is granted), so the queue stays at n. Baseline, same run: a bare heapq push and pop on a heap of
n tuples, the least a priority queue costs. The verdict is the flatness: the subject's cost per
message relative to the bare heap at 10,000 queued over the same at 100 (1.0: flat). The old
algorithm (a count over the queue per request, a sort of it per due: tests/test_limiter_queue.py
_Reference) is measured beside it at 100 and 1,000 queued (info: it grows with n).

An info line also shows the case the heap does not make flat: one message in ten more urgent
than the queue, each such arrival pushing every waiter's turn later and so costing a check of
the whole queue in the next due() (O(n log n)), as the old algorithm paid on every call.

    .venv/bin/python benchmarks/bench_limiter.py
"""

from __future__ import annotations

import heapq
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchResult, header, ratio  # noqa: E402

from routingd.daemon.core.limiter import Limit, Limiter  # noqa: E402

SIZES = (100, 1_000, 10_000)
TARGET = 1.5            # cost per message at 10,000 queued <= 1.5 x the same at 100 (vs a bare heap)
RATE = 8.0              # dyadic: token times are exact


def _limiter_case(n: int, messages: int, urgent_every: int = 0) -> Callable[[], None]:
    lim = Limiter({"p": Limit(rate=RATE, burst=1.0)}, 0.0)
    lim.request("p", None, -1, 0, 0.0, 1e12)         # takes the one token
    for i in range(n):
        lim.request("p", None, i, 0, 0.0, 1e12)

    def run() -> None:
        now = 0.0
        for k in range(messages):
            prio = 1 if urgent_every and k % urgent_every == 0 else 0
            lim.request("p", None, n + k, prio, now, 1e12)
            now += 1.0 / RATE
            lim.due(now)
    return run


def _reference_case(n: int, messages: int) -> Callable[[], None]:
    from test_limiter_queue import _Reference     # tests/ is on sys.path (common.py)
    ref = _Reference(Limit(rate=RATE, burst=1.0), 0.0, lambda w: True)
    ref.request(-1, 0, 0.0, 1e12)
    for i in range(n):
        ref.request(i, 0, 0.0, 1e12)

    def run() -> None:
        now = 0.0
        for k in range(messages):
            ref.request(n + k, 0, now, 1e12)
            now += 1.0 / RATE
            ref.due(now)
    return run


def _heap_case(n: int, messages: int) -> Callable[[], None]:
    heap: list[tuple[int, int, Any]] = [(0, i, None) for i in range(n)]
    heapq.heapify(heap)

    def run() -> None:
        for k in range(messages):
            heapq.heappush(heap, (0, n + k, None))
            heapq.heappop(heap)
    return run


def _per_message(make: Callable[[int, int], Callable[[], None]], n: int, messages: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        run = make(n, messages)
        t0 = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - t0) / messages)
    return best


def run(messages: int = 5_000) -> BenchResult:
    header("limiter: cost per message with n queued (daemon/core/limiter.py)")
    res = BenchResult("limiter")
    rel: dict[int, float] = {}
    _per_message(_limiter_case, SIZES[0], messages, rounds=1)       # warm up (first-call costs)
    for n in SIZES:
        sub = _per_message(_limiter_case, n, messages)
        base = _per_message(_heap_case, n, messages)
        rel[n] = sub / base
        res.figures[f"limiter_us_{n}"] = round(sub * 1e6, 3)
        res.figures[f"heap_us_{n}"] = round(base * 1e6, 3)
        res.say(f"{n:>6} queued: limiter {sub * 1e6:7.2f} us/message, bare heap {base * 1e6:5.2f} us "
                f"({rel[n]:.1f}x)")
    for n in SIZES[:2]:
        old = _per_message(_reference_case, n, min(messages, 1_000), rounds=2)
        res.figures[f"old_us_{n}"] = round(old * 1e6, 3)
        res.say(f"{n:>6} queued: old scan-and-sort algorithm {old * 1e6:9.2f} us/message")
    for n in (SIZES[0], SIZES[-1]):
        mixed = _per_message(lambda n_, m: _limiter_case(n_, m, urgent_every=10), n, min(messages, 1_000), rounds=2)
        res.figures[f"urgent10_us_{n}"] = round(mixed * 1e6, 3)
        res.say(f"{n:>6} queued, one message in ten more urgent: {mixed * 1e6:9.2f} us/message")
    res.check("limiter cost per message at 10,000 / at 100 queued (each vs a bare heap)",
              ratio(rel[SIZES[-1]], rel[SIZES[0]]), TARGET, at_least=False)
    res.check("urgent one in ten: cost per message at 10,000 / at 100 queued",
              ratio(res.figures[f"urgent10_us_{SIZES[-1]}"], res.figures[f"urgent10_us_{SIZES[0]}"]), None)
    return res


if __name__ == "__main__":
    r = run()
    sys.exit(0 if r.ok else 1)
