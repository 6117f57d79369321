"""The ``LRUCache`` container."""

import threading

from .policy import LRUPolicy
from .stats import CacheStats

_MISSING = object()


class LRUCache:
    """A mapping that holds at most ``maxsize`` entries.

    When full, inserting a new key evicts the least recently used one.
    ``on_evict(key, value)`` is called for every evicted entry.
    """

    def __init__(self, maxsize=128, on_evict=None):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.on_evict = on_evict
        self.stats = CacheStats()
        self._data = {}
        self._policy = LRUPolicy()
        self._lock = threading.RLock()

    def __len__(self):
        return len(self._data)

    def __contains__(self, key):
        with self._lock:
            return key in self._data

    def __repr__(self):
        return f"LRUCache(maxsize={self.maxsize}, size={len(self)})"

    def get(self, key, default=None):
        """Return the value for ``key`` and mark it as recently used."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.stats.record_miss()
                return default
            self._policy.touch(key)
            self.stats.record_hit()
            return value

    def __getitem__(self, key):
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def put(self, key, value):
        """Insert or update ``key``; evicts LRU entries when over capacity."""
        with self._lock:
            self._data[key] = value
            self._policy.add(key)
            while len(self._data) > self.maxsize:
                self._evict_one()

    def __setitem__(self, key, value):
        self.put(key, value)

    def delete(self, key):
        """Remove ``key``; return True if it was present."""
        with self._lock:
            if key not in self._data:
                return False
            self._remove(key)
            return True

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def keys(self):
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._policy)

    def items(self):
        with self._lock:
            return [(key, self._data[key]) for key in self._policy]

    def clear(self):
        """Remove every entry (``on_evict`` is not called)."""
        with self._lock:
            for key in list(self._data):
                self._remove(key)

    def resize(self, maxsize):
        """Change the capacity, evicting LRU entries if it shrinks."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        with self._lock:
            self.maxsize = maxsize
            while len(self._data) > self.maxsize:
                self._evict_one()

    def _remove(self, key):
        value = self._data.pop(key)
        self._policy.remove(key)
        return value

    def _evict_one(self):
        key = self._policy.victim()
        value = self._remove(key)
        self.stats.record_eviction()
        if self.on_evict is not None:
            self.on_evict(key, value)
