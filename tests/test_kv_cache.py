"""The prefix cache: longest-prefix lookup per scope, extension replaces, LRU by positions;
and on the engine, a follow-up turn runs only its new ids and answers exactly as an engine
without the cache."""

from __future__ import annotations

import pytest
import serve_helpers as H
import torch

from coop_dag.kv_cache import PrefixCache, left_pad_stack
from coop_dag.serve import ChatEngine, SamplingParams


def _layers(ids: list[int], n_layers: int = 2) -> list:
    """Fake keys/values whose entries are the ids, so slices can be checked."""
    t = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1)
    return [(t + i, t - i) for i in range(n_layers)]


def test_lookup_returns_the_longest_prefix_of_the_same_scope():
    cache = PrefixCache(max_tokens=100)
    cache.store(None, [1, 2, 3, 4], _layers([1, 2, 3, 4]))
    cache.store(None, [1, 2, 9], _layers([1, 2, 9]))
    cache.store("lora1", [1, 2, 3, 4, 5], _layers([1, 2, 3, 4, 5]))
    n, layers = cache.lookup(None, [1, 2, 3, 7, 7])
    assert n == 3
    assert layers[0][0].flatten().tolist() == [1, 2, 3]
    assert layers[1][1].flatten().tolist() == [0, 1, 2]
    assert cache.lookup(None, [5, 6]) == (0, None)
    assert cache.lookup("lora2", [1, 2, 3])[0] == 0  # other adapter, other keys
    assert cache.lookup("lora1", [1, 2, 3, 4, 5, 6])[0] == 5


def test_an_extension_replaces_its_prefix_and_lru_evicts_by_positions():
    cache = PrefixCache(max_tokens=8)
    cache.store(None, [1, 2, 3], _layers([1, 2, 3]))
    cache.store(None, [1, 2, 3, 4, 5], _layers([1, 2, 3, 4, 5]))
    assert cache.tokens == 5  # [1, 2, 3] was dropped: the longer entry covers it
    cache.store(None, [7, 8, 9], _layers([7, 8, 9]))
    assert cache.tokens == 8
    cache.lookup(None, [1, 2])  # touch the older entry: [7, 8, 9] is now the oldest
    cache.store(None, [6, 6], _layers([6, 6]))
    assert cache.lookup(None, [7, 8, 9])[0] == 0 and cache.lookup(None, [1, 2, 3])[0] == 3
    cache.store(None, list(range(20)), _layers(list(range(20))))  # larger than the budget
    assert cache.lookup(None, [0, 1])[0] == 0
    cache.clear()
    assert cache.tokens == 0


def test_left_pad_stack_pads_rows_on_the_left():
    rows = [_layers([1, 2, 3], 1), None, _layers([4], 1)]
    ((keys, values),) = left_pad_stack(rows, 4)
    assert keys.shape == (3, 1, 4, 1)
    assert keys[:, 0, :, 0].tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 4]]


@pytest.fixture(scope="module")
def engines():
    cached = ChatEngine(H.STUDENT).load()
    plain = ChatEngine(H.STUDENT, prefix_cache_tokens=0).load()
    return cached, plain


def test_a_follow_up_turn_runs_only_its_new_ids(engines):
    cached, plain = engines
    tok = cached.tokenizer
    turn0 = tok("Plan the split: I take src/cache.py, you take src/ttl.py.")["input_ids"]
    params = SamplingParams(max_tokens=6)
    first = cached.generate(turn0, None, params)
    assert first.output_ids == plain.generate(turn0, None, params).output_ids
    turn1 = turn0 + first.output_ids + tok(" Tool output: ok. Next step?")["input_ids"]
    before = dict(cached.stats)
    second = cached.generate(turn1, None, params)
    ran = cached.stats["prefill_tokens"] - before["prefill_tokens"]
    reused = cached.stats["cached_tokens"] - before["cached_tokens"]
    # the first turn's prompt and its reply but the last id were cached
    assert reused == len(turn0) + len(first.output_ids) - 1
    assert ran == len(turn1) - 1 - reused
    assert second.output_ids == plain.generate(turn1, None, params).output_ids
    assert plain.prefix_cache is None and "cached_tokens" not in plain.stats or (
        plain.stats["cached_tokens"] == 0
    )
