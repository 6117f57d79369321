"""throttle: rate limiters with an injectable clock."""

from .bucket import TokenBucket
from .clock import Clock, ManualClock, MonotonicClock
from .limiter import KeyedLimiter
from .window import SlidingWindowLog

__all__ = [
    "Clock",
    "KeyedLimiter",
    "ManualClock",
    "MonotonicClock",
    "SlidingWindowLog",
    "TokenBucket",
]
