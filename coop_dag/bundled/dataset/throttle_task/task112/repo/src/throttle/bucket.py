"""The token bucket: a steady refill rate with bursts up to a capacity."""

from __future__ import annotations

from .clock import Clock, MonotonicClock


class TokenBucket:
    """`rate` tokens per second accumulate up to `capacity`; each request spends tokens."""

    def __init__(
        self, rate: float, capacity: float, clock: Clock | None = None,
        tokens: float | None = None,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.clock = clock or MonotonicClock()
        self._tokens = self.capacity if tokens is None else min(float(tokens), self.capacity)
        self._updated = self.clock.now()

    def _refill(self) -> None:
        now = self.clock.now()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now

    def _check(self, n: float) -> None:
        if n <= 0:
            raise ValueError("n must be positive")
        if n > self.capacity:
            raise ValueError(f"{n} tokens exceed the capacity {self.capacity}")

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def try_acquire(self, n: float = 1) -> bool:
        """Spend `n` tokens if available; never waits."""
        self._check(n)
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1) -> float:
        """Seconds until `n` tokens will be available (0.0 if they are now)."""
        self._check(n)
        self._refill()
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate
