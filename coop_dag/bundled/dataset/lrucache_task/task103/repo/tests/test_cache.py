import pytest

from lrucache import LRUCache, LRUPolicy


def test_policy_order_and_victim():
    policy = LRUPolicy()
    for key in "abc":
        policy.add(key)
    policy.touch("a")
    assert list(policy) == ["b", "c", "a"]
    assert policy.victim() == "b"
    policy.remove("b")
    assert policy.victim() == "c"
    policy.clear()
    with pytest.raises(KeyError):
        policy.victim()


def test_put_get_and_eviction_order():
    cache = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3)
    assert "b" not in cache
    assert cache.keys() == ["a", "c"]
    assert cache.stats.evictions == 1


def test_update_existing_key_refreshes_recency():
    cache = LRUCache(maxsize=2)
    cache["a"] = 1
    cache["b"] = 2
    cache["a"] = 10
    cache["c"] = 3
    assert cache.items() == [("a", 10), ("c", 3)]


def test_mapping_protocol():
    cache = LRUCache(maxsize=3)
    cache["x"] = 1
    assert cache["x"] == 1 and len(cache) == 1
    with pytest.raises(KeyError):
        cache["missing"]
    del cache["x"]
    with pytest.raises(KeyError):
        del cache["x"]
    assert cache.delete("x") is False


def test_on_evict_callback_and_resize():
    evicted = []
    cache = LRUCache(maxsize=3, on_evict=lambda k, v: evicted.append((k, v)))
    for i in range(3):
        cache.put(i, i * i)
    cache.resize(1)
    assert evicted == [(0, 0), (1, 1)]
    assert cache.keys() == [2]
    with pytest.raises(ValueError):
        cache.resize(0)


def test_invalid_maxsize_and_clear():
    with pytest.raises(ValueError):
        LRUCache(maxsize=0)
    cache = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.clear()
    assert len(cache) == 0 and cache.keys() == []
    assert repr(cache) == "LRUCache(maxsize=2, size=0)"
