"""Token buckets with time passed in (sans-IO): a provider's configured `Limit`, the `TokenBucket`
the Limiter (limiter.py) keeps per limited provider, and the `Pacer` that keeps the same rate
and burst where the daemon's calls leave (daemon/adapters.py PacingGate). `shared()` is one
process's part of a limit kept by several (Limiter.set_share; docs/scaling.md "Rate limits
across processes"). Pure Python, not compiled (docs/architecture.md "The compiled core").
"""

from __future__ import annotations

from dataclasses import dataclass

# A token counts as there when the bucket holds at least 1 - TOKEN_EPSILON: the limiter wakes a
# waiter at the time time_for() computed, and refilling up to that time may come out a few units in
# the last place short of the whole token it was computed to hold. The simulated vendor's bucket
# (behaviour.RateWindow) counts tokens with the same tolerance: both model the same real number,
# through float sums with different histories, and a call on time must be on time for both
# (docs/simulator.md "Outbound rate limits").
TOKEN_EPSILON = 1e-9

# how long a 429 without Retry-After lowers the rate, and by how much
THROTTLE_DEFAULT_S = 1.0
THROTTLE_FACTOR = 0.5

@dataclass(frozen=True)
class Limit:
    """One provider's configured limit (from routing.toml; daemon/core/provider_models.py)."""

    rate: float | None = None          # tokens per second; None: no rate limit
    burst: float | None = None         # bucket size; None: max(1, rate) (one second's worth)
    max_inflight: int | None = None    # calls in flight at once; None: unbounded

    def depth(self) -> float:
        """The bucket's size: `burst`, or one second's worth (at least one token)."""
        return self.burst if self.burst is not None else max(1.0, self.rate or 1.0)


def shared(rate: float, burst: float, share: float) -> tuple[float, float]:
    """A process's part of a limit kept by `1/share` processes (Limiter.set_share): the rate
    times `share`, and the bucket too but never below one token (a bucket that cannot hold a
    whole token would never let a call out)."""
    return rate * share, max(1.0, burst * share)


class TokenBucket:
    """A token bucket with time passed in. `rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "tokens", "at", "throttled_until", "base_rate", "clamped")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.base_rate = rate
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now
        self.throttled_until: float | None = None
        # tokens were lost to a full bucket since the Limiter last looked (a waiter's turn slips)
        self.clamped = False

    def refill(self, now: float) -> None:
        if self.throttled_until is not None and now >= self.throttled_until:
            # the lowered rate applied until throttled_until: refill up to then at it, then normal
            self._add(self.throttled_until)
            self.rate = self.base_rate
            self.throttled_until = None
        self._add(now)

    def _add(self, now: float) -> None:
        if now > self.at:
            tokens = self.tokens + (now - self.at) * self.rate
            if tokens > self.burst:
                tokens = self.burst
                self.clamped = True
            self.tokens = tokens
            self.at = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0 - TOKEN_EPSILON:
            self.tokens -= 1.0
            return True
        return False

    def time_for(self, n: float, now: float) -> float:
        """When `n` tokens will have been available (counting the ones there now), at the current rate."""
        self.refill(now)
        missing = n - self.tokens
        if missing <= TOKEN_EPSILON:
            return now
        return now + missing / self.rate

    def rescale(self, rate: float, burst: float, now: float) -> None:
        """A new rate and size from `now` on (this process's share changed, Limiter.set_share):
        tokens saved up beyond the new size are lost; a throttle in force keeps its factor."""
        self.refill(now)
        self.base_rate = rate
        self.rate = rate * THROTTLE_FACTOR if self.throttled_until is not None else rate
        self.burst = burst
        if self.tokens > burst:
            self.tokens = burst

    def throttle(self, now: float, for_s: float) -> None:
        self.refill(now)
        until = now + for_s
        self.rate = self.base_rate * THROTTLE_FACTOR
        if self.throttled_until is None or until > self.throttled_until:
            self.throttled_until = until


class Pacer:
    """The limit once more where a call leaves (the daemon's adapters, daemon/adapters.py). A call
    granted its slot by the Limiter goes out only after its attempt's row is committed
    (write-ahead); a busy store commits the rows of many granted slots at once, and a busy event
    loop wakes many waiting calls at once, so calls the Limiter spaced a token apart could leave
    together, above the vendor's bucket. The driver lets calls out one at a time, in order: each
    asks `wait(now)` until it answers 0 (a token taken at the moment it leaves), sleeping the
    seconds it answers otherwise. Departures then keep to `rate` and `burst` as they happen,
    whatever delayed them; the Limiter has already spaced them, so the wait is at most the
    bunching that the commits and the loop put in."""

    __slots__ = ("bucket", "_rate", "_burst", "share")

    def __init__(self, rate: float, burst: float, share: float = 1.0) -> None:
        self._rate, self._burst, self.share = rate, burst, share
        r, b = shared(rate, burst, share)
        self.bucket = TokenBucket(r, b, 0.0)       # full; the drivers' clocks start at 0 or later

    @property
    def rate(self) -> float:
        """The configured rate (the whole deployment's; the bucket keeps this process's share)."""
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def set_share(self, share: float, now: float) -> None:
        """This process's share of the limit changed (Limiter.set_share)."""
        if share != self.share:
            self.share = share
            self.bucket.rescale(*shared(self._rate, self._burst, share), now)

    def wait(self, now: float) -> float:
        """0.0: a call may leave at `now` (its token is taken); else how long until it may."""
        b = self.bucket
        if b.take(now):
            return 0.0
        # > 0 always (take() refused: more than TOKEN_EPSILON is missing), even where `now` is so
        # large that now + wait would round back to now
        return (1.0 - b.tokens) / b.rate
