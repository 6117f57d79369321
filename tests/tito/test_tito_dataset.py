"""TitoSFTDataset: verl's custom dataset contract (``data.custom_cls`` of ``sft_trainer``) and
the HF-trainer extras, on TITO parquet built from hand-made trajectories.

verl is not installed here; the contract is tested directly: the constructor signature verl
calls, the item keys/dtypes/shapes ``MultiTurnSFTDataset`` returns, collation the way verl's
``SFTTensorCollator`` does it (jagged nested tensors under no_padding, ``default_collate``
under right padding), truncation, and loss masks equal to the packed rows' loss spans.
"""

from __future__ import annotations

import inspect

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_tito import make_pairs, make_traj
from torch.utils.data import default_collate

from coop_dag.tito.build import build_tito_parquet
from coop_dag.tito.chat import tokenizer_sha256
from coop_dag.tito.config import TitoConfig
from coop_dag.tito.dataset import IGNORE_INDEX, TitoSFTDataset
from coop_dag.tito.packing import row_loss_spans
from coop_dag.tito.tokens import load_tokenizer, qwen3_tokenizer_dir
from coop_dag.tito.trajectories import synthesise_token_capture


class DictConfigLike:
    """What verl passes: an OmegaConf DictConfig (``.get`` and attribute access)."""

    def __init__(self, **values):
        self._v = values

    def get(self, key, default=None):
        return self._v.get(key, default)

    def __getattr__(self, key):
        try:
            return self._v[key]
        except KeyError:
            raise AttributeError(key) from None


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("Qwen3", qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def built(tok, tmp_path_factory):
    """Native, packed TITO parquet (turns 0-2 x12 as loss weight, so rows are distinct)."""
    trajs = [synthesise_token_capture(t, tok) for t in make_pairs(3)]
    out = tmp_path_factory.mktemp("tito")
    result, paths = build_tito_parquet(
        trajs,
        tok,
        out,
        TitoConfig(upweight_mode="weight", val_fraction=0.34),
        teacher_tokenizer_sha256=tokenizer_sha256(tok),
    )
    return result, paths


def longest(result) -> int:
    return max(len(r["input_ids"]) + len(r["output_ids"]) for r in result.train)


def test_constructor_is_what_verl_calls(tok, built):
    params = list(inspect.signature(TitoSFTDataset.__init__).parameters)
    assert params == ["self", "parquet_files", "tokenizer", "config", "processor", "max_samples"]
    result, paths = built
    # verl: dataset_cls(parquet_files=, tokenizer=, config=, processor=, max_samples=)
    ds = TitoSFTDataset(
        parquet_files=str(paths["train"]),
        tokenizer=tok,
        config=DictConfigLike(max_length=longest(result), truncation="error", pad_mode="right"),
        processor=None,
        max_samples=-1,
    )
    assert len(ds) == len(result.train)
    ds2 = TitoSFTDataset(
        [paths["train"], paths["val"]], tok, {"max_length": 64, "truncation": "left"}
    )
    assert len(ds2) == len(result.train) + len(result.val)


def test_right_padding_items(tok, built):
    result, paths = built
    max_length = longest(result) + 7
    ds = TitoSFTDataset(paths["train"], tok, {"max_length": max_length, "pad_mode": "right"})
    for i, row in enumerate(result.train):
        item = ds[i]
        assert set(item) == {
            "input_ids",
            "attention_mask",
            "position_ids",
            "loss_mask",
            "labels",
            "weight",
        }
        n = len(row["input_ids"]) + len(row["output_ids"])
        for key in ("input_ids", "attention_mask", "position_ids", "loss_mask", "labels"):
            assert item[key].shape == (max_length,) and item[key].dtype == torch.long
        assert item["input_ids"][:n].tolist() == row["input_ids"] + row["output_ids"]
        assert (item["input_ids"][n:] == tok.pad_token_id).all()
        assert item["attention_mask"].tolist() == [1] * n + [0] * (max_length - n)
        assert item["position_ids"].tolist() == list(range(n)) + [0] * (max_length - n)
        expect = [0] * max_length
        for s, e in row_loss_spans(row):
            expect[s:e] = [1] * (e - s)
        assert item["loss_mask"].tolist() == expect
        labels = item["labels"].tolist()
        assert all(
            (lab == tok_id) if m else (lab == IGNORE_INDEX)
            for lab, tok_id, m in zip(labels, item["input_ids"].tolist(), expect, strict=True)
        )
        assert item["weight"].shape == (1,) and item["weight"].item() == row["weight"]
    batch = default_collate([ds[0], ds[1]])  # verl's collator under right padding
    assert batch["input_ids"].shape == (2, max_length) and batch["weight"].shape == (2, 1)


def test_no_padding_items_collate_as_nested(tok, built):
    result, paths = built
    ds = TitoSFTDataset(
        paths["train"], tok, {"max_length": longest(result), "pad_mode": "no_padding"}
    )
    items = [ds[i] for i in range(3)]
    for item, row in zip(items, result.train, strict=False):
        n = len(row["input_ids"]) + len(row["output_ids"])
        assert "attention_mask" not in item
        assert (
            item["input_ids"].shape == item["loss_mask"].shape == item["position_ids"].shape == (n,)
        )
        assert item["position_ids"].tolist() == list(range(n))
    # verl's SFTTensorCollator(no_padding): every tensor key becomes a jagged nested tensor
    for key in items[0]:
        nested = torch.nested.as_nested_tensor([it[key] for it in items], layout=torch.jagged)
        assert nested.is_nested
    offsets = torch.nested.as_nested_tensor(
        [it["input_ids"] for it in items], layout=torch.jagged
    ).offsets()
    assert offsets.diff().tolist() == [len(it["input_ids"]) for it in items]


def test_loss_mask_covers_exactly_the_output_spans(tok, built):
    result, paths = built
    ds = TitoSFTDataset(
        paths["train"], tok, {"max_length": longest(result), "pad_mode": "no_padding"}
    )
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    packed_seen = False
    for i, row in enumerate(result.train):
        item = ds[i]
        spans = row_loss_spans(row)
        packed_seen |= len(spans) > 1
        assert int(item["loss_mask"].sum()) == sum(e - s for s, e in spans)
        ids = item["input_ids"].tolist()
        mask = item["loss_mask"].tolist()
        # every trained segment ends with the end-of-turn id; prompt tokens are never trained
        segments = [(s, e) for s, e in spans]
        for s, e in segments:
            assert ids[e - 1] == eot and all(mask[s:e]) and (s == 0 or not mask[s - 1])
        assert not any(mask[: len(row["input_ids"])][: spans[0][0]])
    assert packed_seen


def test_labels_and_loss_mask_agree_with_verl_shift(tok, built):
    """HF shifts labels inside the model; verl rolls loss_mask left by one. Same tokens."""
    result, paths = built
    ds = TitoSFTDataset(
        paths["train"], tok, {"max_length": longest(result), "pad_mode": "no_padding"}
    )
    item = ds[0]
    n = item["input_ids"].shape[0]
    torch.manual_seed(0)
    logits = torch.randn(n, 50)
    targets = item["input_ids"] % 50
    logp = torch.log_softmax(logits, -1)
    # HF: loss over positions t predicting labels[t+1]
    labels = torch.where(item["labels"] == IGNORE_INDEX, IGNORE_INDEX, targets)
    hf = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX)
    # verl: log_prob[t] = log p(input_ids[t+1] | ..t), mask = roll(loss_mask, -1)
    token_logp = logp[torch.arange(n - 1), targets[1:]]
    mask = torch.roll(item["loss_mask"], -1)[: n - 1].float()
    verl = -(token_logp * mask).sum() / mask.sum()
    assert torch.allclose(hf, verl)


def test_truncation(tok, built):
    result, paths = built
    row = max(result.train, key=lambda r: len(r["input_ids"]) + len(r["output_ids"]))
    i = result.train.index(row)
    ids = row["input_ids"] + row["output_ids"]
    limit = len(ids) - 100
    with pytest.raises(ValueError, match="max_length"):
        TitoSFTDataset(paths["train"], tok, {"max_length": limit, "truncation": "error"})[i]
    full_mask = TitoSFTDataset(
        paths["train"], tok, {"max_length": len(ids), "pad_mode": "no_padding"}
    )[i]["loss_mask"]
    for mode in ("left", "right"):
        for pad in ("right", "no_padding"):
            item = TitoSFTDataset(
                paths["train"], tok, {"max_length": limit, "truncation": mode, "pad_mode": pad}
            )[i]
            assert item["input_ids"].shape == (limit,)
            keep = slice(100, None) if mode == "left" else slice(0, limit)
            assert item["input_ids"].tolist() == ids[keep]
            assert item["loss_mask"].tolist() == full_mask[keep].tolist()
            assert item["position_ids"].tolist() == list(range(limit))
            if pad == "right":
                assert int(item["attention_mask"].sum()) == limit


def test_max_samples_and_shuffle(tok, built):
    result, paths = built
    cfg = {"max_length": longest(result), "pad_mode": "no_padding"}
    first = TitoSFTDataset(paths["train"], tok, cfg, max_samples=3)
    assert len(first) == 3
    assert (
        first[2]["input_ids"].tolist()
        == result.train[2]["input_ids"] + result.train[2]["output_ids"]
    )
    a = TitoSFTDataset(paths["train"], tok, {**cfg, "shuffle": True, "seed": 7}, max_samples=3)
    b = TitoSFTDataset(paths["train"], tok, {**cfg, "shuffle": True, "seed": 7}, max_samples=3)
    assert [a[i]["input_ids"].tolist() for i in range(3)] == [
        b[i]["input_ids"].tolist() for i in range(3)
    ]


def test_duplicate_mode_rows_and_weights(tok, tmp_path):
    result, paths = build_tito_parquet(
        [make_traj()], tok, tmp_path, TitoConfig(pack=False, val_fraction=0.0)
    )
    ds = TitoSFTDataset(paths["train"], tok, {"max_length": 1 << 16, "pad_mode": "no_padding"})
    assert len(ds) == 12 * 3 + 2
    assert {ds[i]["weight"].item() for i in range(len(ds))} == {1.0}


def test_plain_parquet_without_spans_or_weight(tok, tmp_path):
    """Any {input_ids, output_ids} parquet works: loss on output_ids, weight 1."""
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3]], "output_ids": [[4, 5]]}), path)
    item = TitoSFTDataset(str(path), tok, {"max_length": 8})[0]
    assert item["loss_mask"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert item["labels"].tolist()[:5] == [IGNORE_INDEX] * 3 + [4, 5]
    assert item["weight"].tolist() == [1.0]


def test_bad_inputs(tok, tmp_path):
    path = tmp_path / "oov.parquet"
    pq.write_table(pa.table({"input_ids": [[1]], "output_ids": [[len(tok) + 1]]}), path)
    with pytest.raises(ValueError, match="vocabulary"):
        TitoSFTDataset(path, tok, {"max_length": 8})
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["x"]}), bad)
    with pytest.raises(ValueError, match="missing"):
        TitoSFTDataset(bad, tok, {})
    for cfg in ({"pad_mode": "left_right"}, {"truncation": "middle"}):
        with pytest.raises(ValueError):
            TitoSFTDataset(path, tok, cfg)
