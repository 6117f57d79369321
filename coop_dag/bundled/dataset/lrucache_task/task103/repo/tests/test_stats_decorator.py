from lrucache import CacheStats, LRUCache, lru_cached, make_key


def test_stats_counts_hits_and_misses():
    cache = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("zzz")
    assert cache.stats.hits == 2
    assert cache.stats.misses == 1
    assert cache.stats.requests == 3
    assert abs(cache.stats.hit_rate - 2 / 3) < 1e-9


def test_empty_stats_hit_rate():
    assert CacheStats().hit_rate == 0.0
    assert CacheStats().snapshot() == {"hits": 0, "misses": 0, "evictions": 0, "hit_rate": 0.0}


def test_make_key_ignores_kwarg_order():
    assert make_key((1,), {"a": 1, "b": 2}) == make_key((1,), {"b": 2, "a": 1})
    assert make_key((1,), {}) != make_key((), {"x": 1})


def test_decorator_memoises():
    calls = []

    @lru_cached(maxsize=2)
    def square(n):
        calls.append(n)
        return n * n

    assert square(3) == 9
    assert square(3) == 9
    assert calls == [3]
    info = square.cache_info()
    assert info["hits"] == 1 and info["misses"] == 1
    assert info["maxsize"] == 2 and info["currsize"] == 1
    assert square.__name__ == "square"


def test_decorator_eviction_and_clear():
    @lru_cached(maxsize=1)
    def ident(x):
        return x

    ident(1)
    ident(2)
    assert ident.cache.keys() == [(2,)]
    ident.cache_clear()
    assert ident.cache_info()["currsize"] == 0


def test_decorator_caches_none():
    calls = []

    @lru_cached()
    def nothing():
        calls.append(1)

    nothing()
    nothing()
    assert calls == [1]
