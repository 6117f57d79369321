"""A per-key limiter: one token bucket for each user, client address, API key..."""

from __future__ import annotations

from .bucket import TokenBucket
from .clock import Clock, MonotonicClock


class KeyedLimiter:
    """Creates a TokenBucket per key on first use; all buckets share rate and capacity."""

    def __init__(self, rate: float, capacity: float, clock: Clock | None = None) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self.clock = clock or MonotonicClock()
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, key: str) -> TokenBucket:
        """The bucket for `key`, created full if it does not exist yet."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.capacity, self.clock)
            self._buckets[key] = bucket
        return bucket

    def allow(self, key: str, n: float = 1) -> bool:
        return self.bucket(key).try_acquire(n)

    def retry_after(self, key: str, n: float = 1) -> float:
        """Seconds until `key` may spend `n` tokens."""
        return self.bucket(key).wait_time(n)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)
