"""An exact sliding-window limiter: at most `limit` events in any `period` seconds."""

from __future__ import annotations

from collections import deque

from .clock import Clock, MonotonicClock


class SlidingWindowLog:
    """Keeps the timestamps of accepted events per key (memory grows with `limit`)."""

    def __init__(self, limit: int, period: float, clock: Clock | None = None) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period positive")
        self.limit = limit
        self.period = float(period)
        self.clock = clock or MonotonicClock()
        self._log: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float]:
        log = self._log.setdefault(key, deque())
        while log and log[0] <= now - self.period:
            log.popleft()
        return log

    def allow(self, key: str = "") -> bool:
        """Record an event for `key` if the window has room."""
        now = self.clock.now()
        log = self._prune(key, now)
        if len(log) < self.limit:
            log.append(now)
            return True
        return False

    def count(self, key: str = "") -> int:
        """Events accepted for `key` within the current window."""
        return len(self._prune(key, self.clock.now()))

    def reset(self, key: str | None = None) -> None:
        """Forget one key's events, or every key's."""
        if key is None:
            self._log.clear()
        else:
            self._log.pop(key, None)
