"""Concurrent requests on the embedded engine are generated as one left-padded batch, and each
row comes back exactly as if it had been generated alone: same ids, its own max_tokens, its
own stop strings, its own adapter (rows of different adapters never share a batch)."""

from __future__ import annotations

import threading
import time

import pytest
import serve_helpers as H

from coop_dag.serve import (
    DEFAULT_BATCH_GAP,
    DEFAULT_BATCH_WINDOW,
    DEFAULT_MAX_BATCH,
    ChatEngine,
    SamplingParams,
    ServeError,
)

PROMPTS = [
    "Plan the split of files with your partner before anyone edits src/cache.py.",
    "You implement the cache eviction feature; your colleague adds the TTL option. Tell them "
    "which files you will take.",
    "Send your partner a plan naming the files you will take, then edit them.",
]


@pytest.fixture(scope="module")
def engine():
    eng = ChatEngine(H.STUDENT).load()
    eng.load_adapter("a", H.adapters()["A"])
    return eng


def _ids(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def _concurrently(engine, requests, *, max_batch, window=10.0, gap=None, stagger=0.0):
    """Run (prompt ids, adapter name or None, params) requests from threads, ``stagger``
    seconds apart; by default a long window and gap make the batch wait until all queued."""
    engine.max_batch, engine.batch_window = max_batch, window
    engine.batch_gap = window if gap is None else gap
    before = engine.stats.get("batches", 0)
    out: list = [None] * len(requests)

    def go(i, ids, name, params):
        adapter = engine.resolve_model(name) if name else None
        out[i] = engine.generate(ids, adapter, params)

    threads = [threading.Thread(target=go, args=(i, *r)) for i, r in enumerate(requests)]
    try:
        for t in threads:
            t.start()
            time.sleep(stagger)
        for t in threads:
            t.join(timeout=120)
    finally:
        engine.max_batch, engine.batch_window = DEFAULT_MAX_BATCH, DEFAULT_BATCH_WINDOW
        engine.batch_gap = DEFAULT_BATCH_GAP
    return out, engine.stats["batches"] - before


def test_a_batch_gives_each_row_what_it_would_get_alone(engine):
    requests = [
        (_ids(engine, PROMPTS[0]), None, SamplingParams(max_tokens=12)),
        (_ids(engine, PROMPTS[1]), None, SamplingParams(max_tokens=5)),
        (_ids(engine, PROMPTS[2]), None, SamplingParams(max_tokens=9, logprobs=False)),
    ]
    alone = [engine.generate(ids, None, params) for ids, _, params in requests]
    together, batches = _concurrently(engine, requests, max_batch=3)
    assert batches == 1  # one generate call for all three rows
    assert engine.stats["max_batch_rows"] >= 3
    assert engine.describe()["stats"]["batches"] == engine.stats["batches"]  # GET /v1/info
    for a, b, (_, _, params) in zip(alone, together, requests, strict=True):
        assert b.output_ids == a.output_ids
        assert b.text == a.text and b.finish_reason == a.finish_reason
        assert len(b.output_ids) <= params.max_tokens


def test_prompts_of_any_length_share_a_batch(engine):
    requests = [
        (_ids(engine, PROMPTS[1]), None, SamplingParams(max_tokens=4)),
        (_ids(engine, "Hi"), None, SamplingParams(max_tokens=4)),  # one id: nothing to prefill
    ]
    alone = [engine.generate(ids, None, params) for ids, _, params in requests]
    out, batches = _concurrently(engine, requests, max_batch=2)
    assert batches == 1  # prompts are prefilled row by row, so padding costs no prefill
    assert [g.output_ids for g in out] == [g.output_ids for g in alone]


def test_a_trickle_of_requests_is_gathered_and_a_late_one_is_not(engine):
    ids = _ids(engine, PROMPTS[0])
    requests = [(ids, None, SamplingParams(max_tokens=3))] * 4
    # agents answer a finished batch a few at a time: arrivals 50 ms apart share one batch
    _, batches = _concurrently(engine, requests, max_batch=8, window=5.0, gap=0.5, stagger=0.05)
    assert batches == 1
    # a request after the gap has passed starts a batch of its own
    _, batches = _concurrently(engine, requests[:2], max_batch=8, window=5.0, gap=0.1, stagger=1.0)
    assert batches == 2


def test_stop_strings_end_their_own_row_only(engine):
    ids = _ids(engine, PROMPTS[0])
    free = engine.generate(ids, None, SamplingParams(max_tokens=16))
    assert free.finish_reason == "length" and len(free.text) > 2
    stop = free.text[len(free.text) // 2 :][:2]  # a string the greedy output is known to hold
    requests = [
        (ids, None, SamplingParams(max_tokens=16, stop=(stop,))),
        (ids, None, SamplingParams(max_tokens=16)),
    ]
    (stopped, full), batches = _concurrently(engine, requests, max_batch=2)
    assert batches == 1
    assert full.output_ids == free.output_ids
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stop not in stopped.text and free.text.startswith(stopped.text)
    assert len(stopped.output_ids) < len(full.output_ids)


def test_rows_of_different_adapters_run_in_separate_batches(engine):
    ids = _ids(engine, PROMPTS[1])
    params = SamplingParams(max_tokens=8)
    alone = {
        None: engine.generate(ids, None, params),
        "a": engine.generate(ids, engine.resolve_model("a"), params),
    }
    assert alone[None].output_ids != alone["a"].output_ids  # the adapter changes outputs
    (base, tuned), batches = _concurrently(
        engine, [(ids, None, params), (ids, "a", params)], max_batch=2
    )
    assert batches == 2
    assert base.output_ids == alone[None].output_ids
    assert tuned.output_ids == alone["a"].output_ids


def test_seeded_samples_run_alone_and_repeat(engine):
    ids = _ids(engine, PROMPTS[0])
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    (first, second), batches = _concurrently(
        engine, [(ids, None, params), (ids, None, params)], max_batch=2
    )
    assert batches == 2 and first.output_ids == second.output_ids


def test_max_batch_must_be_positive():
    with pytest.raises(ServeError, match="max_batch must be >= 1, got 0"):
        ChatEngine(H.STUDENT, max_batch=0)
