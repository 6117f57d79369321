"""Key/value caches for the embedded server: per-row slices of a batch cache, left-padded
stacking into one, and a prefix cache of recent sequences.

Why: an agent's next request is its last prompt plus the reply and a tool result, so most of
each prompt was already run through the model. Re-running it (prefill) was most of the CPU
time of a held-out rollout; the prefix cache keeps the keys and values of recent sequences
and a new prompt only runs the part past its longest cached prefix.

A layer is a ``(keys, values)`` pair of tensors shaped ``[batch, kv_heads, seq, head_dim]``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

Layers = list[tuple[Any, Any]]

DEFAULT_PREFIX_CACHE_TOKENS = 65536  # ~3 GB of fp32 keys/values for SmolLM2-135M


def new_cache(config: Any, layers: Layers | None = None) -> Any:
    """A transformers ``DynamicCache`` holding ``layers`` (empty when None)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for index, (keys, values) in enumerate(layers or []):
        cache.update(keys, values, index)
    return cache


def layer_slices(cache: Any, row: int, start: int, stop: int) -> Layers:
    """Row ``row``'s keys and values at sequence positions ``start:stop`` (views)."""
    return [
        (layer.keys[row : row + 1, :, start:stop], layer.values[row : row + 1, :, start:stop])
        for layer in cache.layers
    ]


def left_pad_stack(rows: list[Layers | None], length: int) -> Layers:
    """One batch of ``rows`` (each ``[1, heads, seq_i, dim]`` per layer; None: no positions),
    zero-padded on the left to ``length`` positions: the attention mask hides the padding."""
    import torch

    like = next(r for r in rows if r is not None)
    empty = [(k[:, :, :0], v[:, :, :0]) for k, v in like]
    stacked = []
    for per_row in zip(*(r if r is not None else empty for r in rows), strict=True):
        keys, values = [], []
        for k, v in per_row:
            pad = length - k.shape[2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        stacked.append((torch.cat(keys), torch.cat(values)))
    return stacked


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    """Keys and values of recent sequences, per scope (the adapter that produced them: the
    same ids under another adapter have other keys), least recently used evicted first once
    they hold more than ``max_tokens`` positions."""

    def __init__(self, max_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, tuple[Any, np.ndarray, Layers]] = OrderedDict()
        self._next = 0
        self.hits = 0
        self.lookups = 0

    @property
    def tokens(self) -> int:
        return sum(len(ids) for _, ids, _ in self._entries.values())

    def lookup(self, scope: Any, ids: list[int]) -> tuple[int, Layers | None]:
        """(n, layers): the longest cached prefix of ``ids`` under ``scope`` and its keys and
        values (views; a cache built from them copies on update), or (0, None)."""
        self.lookups += 1
        want = np.asarray(ids, dtype=np.int64)
        best, best_key = 0, None
        for key, (entry_scope, entry_ids, _) in self._entries.items():
            if entry_scope == scope:
                n = _common_prefix(entry_ids, want)
                if n > best:
                    best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        self.hits += 1
        layers = self._entries[best_key][2]
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def store(self, scope: Any, ids: list[int], layers: Layers) -> None:
        """Keep ``layers`` (the keys and values of ``ids``); entries it extends are dropped."""
        if not ids or len(ids) > self.max_tokens:
            return
        seq = np.asarray(ids, dtype=np.int64)
        for key, (entry_scope, entry_ids, _) in list(self._entries.items()):
            if entry_scope == scope and len(entry_ids) <= len(seq):
                if _common_prefix(entry_ids, seq) == len(entry_ids):
                    del self._entries[key]
        # copies: a view would pin the whole batch cache it was sliced from
        self._entries[self._next] = (scope, seq, [(k.clone(), v.clone()) for k, v in layers])
        self._next += 1
        while self.tokens > self.max_tokens:
            self._entries.popitem(last=False)

    def clear(self, scope: Any = None) -> None:
        """Forget every entry (of ``scope`` only, when given)."""
        for key, (entry_scope, _, _) in list(self._entries.items()):
            if scope is None or entry_scope == scope:
                del self._entries[key]
