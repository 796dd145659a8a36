"""A bounded quantile sketch: the simulator's time-to-deliver percentiles in constant memory.

Log-bucketed, as DDSketch (Masson et al., VLDB 2019): a value x > 0 is counted in bucket
k = ceil(log_gamma(x)) with gamma = (1 + a) / (1 - a), and the bucket stands for the value
2 gamma^k / (gamma + 1), which is within relative error `a` of every x in (gamma^(k-1), gamma^k].
So the r-th smallest value read off the sketch is within `a` (relative) of the exact r-th smallest
value, for every rank r. The count, the sum, the minimum and the maximum are kept exactly (the
estimate of rank 0 and n-1 is the exact minimum and maximum; every estimate is clamped to them).

Memory is one dict entry per bucket in use: with a = 0.5% a bucket spans 1% of its value, so
times from 1 ms to 1 hour need at most ~1,500 buckets whatever the number of values.

Written here rather than taken from the `ddsketch` package: thirty lines, no dependency for the
simulator, and `quantile` keeps the report's linear-interpolated percentile (numpy's default),
which a library's nearest-rank query does not.
"""

from __future__ import annotations

import math

RELATIVE_ACCURACY = 0.005   # 0.5%: the report's p50/p95/p99 are within this of the exact ones
TINY = 1e-9                 # seconds: values at or below it count as 0 (absolute error < 1 ns)


class QuantileSketch:
    __slots__ = ("accuracy", "_inv_log_gamma", "_gamma", "buckets", "zeros", "count", "total", "min", "max")

    def __init__(self, accuracy: float = RELATIVE_ACCURACY) -> None:
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"relative accuracy must be in (0, 1), got {accuracy}")
        self.accuracy = accuracy
        self._gamma = (1.0 + accuracy) / (1.0 - accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        if x <= TINY:
            self.zeros += 1
            return
        k = math.ceil(math.log(x) * self._inv_log_gamma)
        b = self.buckets
        b[k] = b.get(k, 0) + 1

    def _value_at(self, rank: int, keys: list[int]) -> float:
        """The estimate of the rank-th smallest value (0-based)."""
        if rank <= 0:
            return self.min
        if rank >= self.count - 1:
            return self.max
        seen = self.zeros
        if rank < seen:
            return max(0.0, self.min)
        for k in keys:
            seen += self.buckets[k]
            if rank < seen:
                v = 2.0 * self._gamma ** k / (self._gamma + 1.0)
                return min(max(v, self.min), self.max)
        return self.max         # pragma: no cover - the counts add up to self.count

    def quantile(self, q: float) -> float | None:
        """The linear-interpolated q-th percentile (0..100, numpy's default); None when empty."""
        n = self.count
        if n == 0:
            return None
        keys = sorted(self.buckets)
        pos = (n - 1) * q / 100.0
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        v_lo = self._value_at(lo, keys)
        if hi == lo:
            return v_lo
        return v_lo + (self._value_at(hi, keys) - v_lo) * (pos - lo)
