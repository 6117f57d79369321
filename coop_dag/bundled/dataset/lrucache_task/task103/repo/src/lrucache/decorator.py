"""``@lru_cached`` memoisation decorator built on ``LRUCache``."""

import functools

from .cache import LRUCache

_MISSING = object()
_KWARGS_MARK = object()


def make_key(args, kwargs):
    """Build a hashable key from call arguments (keyword order ignored)."""
    key = tuple(args)
    if kwargs:
        key += (_KWARGS_MARK,) + tuple(sorted(kwargs.items()))
    return key


def lru_cached(maxsize=128, key=make_key):
    """Memoise a function with an ``LRUCache`` of ``maxsize`` entries.

    The wrapper exposes ``cache``, ``cache_info()`` and ``cache_clear()``.
    """

    def decorate(func):
        cache = LRUCache(maxsize)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            cache_key = key(args, kwargs)
            value = cache.get(cache_key, _MISSING)
            if value is _MISSING:
                value = func(*args, **kwargs)
                cache.put(cache_key, value)
            return value

        def cache_info():
            info = cache.stats.snapshot()
            info.update(maxsize=cache.maxsize, currsize=len(cache))
            return info

        wrapper.cache = cache
        wrapper.cache_info = cache_info
        wrapper.cache_clear = cache.clear
        return wrapper

    return decorate
