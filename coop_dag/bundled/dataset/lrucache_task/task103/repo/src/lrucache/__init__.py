"""lrucache: a small thread-safe least-recently-used cache."""

from .cache import LRUCache
from .decorator import lru_cached, make_key
from .policy import LRUPolicy
from .stats import CacheStats

__all__ = ["CacheStats", "LRUCache", "LRUPolicy", "lru_cached", "make_key"]
