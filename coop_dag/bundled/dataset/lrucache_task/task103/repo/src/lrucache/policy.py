"""Recency bookkeeping for the cache, independent of the stored values."""

from collections import OrderedDict


class LRUPolicy:
    """Tracks key recency; iteration goes from least to most recently used."""

    def __init__(self):
        self._order = OrderedDict()

    def __len__(self):
        return len(self._order)

    def __contains__(self, key):
        return key in self._order

    def __iter__(self):
        return iter(self._order)

    def add(self, key):
        """Record ``key`` as the most recently used entry."""
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key):
        """Mark an existing key as most recently used."""
        self._order.move_to_end(key)

    def remove(self, key):
        self._order.pop(key, None)

    def victim(self):
        """Return the key that should be evicted next (the LRU key)."""
        if not self._order:
            raise KeyError("victim(): policy is empty")
        return next(iter(self._order))

    def clear(self):
        self._order.clear()
