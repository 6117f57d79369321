"""training.adapters on hand-made PEFT directories (real safetensors written with torch)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coop_dag.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LINEAGE_FILE,
    AdapterError,
    adapter_name,
    adapter_sha12,
    read_lineage,
    repair_adapter,
    validate_adapter,
    write_lineage,
)

BASE = "Qwen/Qwen3-4B"
MODULES = ("q_proj", "v_proj")


def good_config(**over) -> dict:
    cfg = {
        "base_model_name_or_path": BASE,
        "bias": "none",
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "peft_type": "LORA",
        "r": 4,
        "target_modules": list(MODULES),
        "task_type": "CAUSAL_LM",
    }
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not _DROP}


_DROP = object()


def make_adapter(
    root: Path,
    *,
    config: dict | None = None,
    r: int = 4,
    layers: int = 2,
    zero_b: bool = False,
    seed: int = 0,
    tensors: dict | None = None,
) -> Path:
    """A PEFT directory shaped like verl's export: base_model.model.<...>.lora_{A,B}.weight."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    if tensors is None:
        tensors = {}
        for layer in range(layers):
            for module in MODULES:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, 16, generator=gen)
                b = torch.zeros(16, r) if zero_b else torch.randn(16, r, generator=gen)
                tensors[f"{prefix}.lora_B.weight"] = b
    save_file(tensors, str(root / ADAPTER_WEIGHTS))
    cfg = good_config(r=r) if config is None else config
    (root / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=4))
    return root


def write_config(d: Path, cfg: dict) -> None:
    (d / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=4))


def read_config(d: Path) -> dict:
    return json.loads((d / ADAPTER_CONFIG).read_text())


# --------------------------------------------------------------------------- validate


def test_valid_adapter_is_described(tmp_path):
    d = make_adapter(tmp_path / "a")
    info = validate_adapter(d, expected_base=BASE)
    assert info.r == 4 and info.lora_alpha == 16.0
    assert info.task_type == "CAUSAL_LM"
    assert info.base_model == BASE
    assert info.target_modules == MODULES
    assert info.lora_tensors == 8
    assert info.sha12 == adapter_sha12(d) and len(info.sha12) == 12
    assert info.name == f"student-{info.sha12}" == adapter_name(d)
    meta = info.as_metadata()
    assert meta["adapter_name"] == info.name and meta["lora_r"] == 4
    json.dumps(meta)  # metadata must be JSON-serialisable


def test_base_model_trailing_slash_is_the_same_model(tmp_path):
    d = make_adapter(tmp_path / "a", config=good_config(base_model_name_or_path="/models/q/"))
    assert validate_adapter(d, expected_base="/models/q").base_model == "/models/q/"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: (d / ADAPTER_CONFIG).unlink(), "missing adapter_config.json"),
        (lambda d: (d / ADAPTER_WEIGHTS).unlink(), "missing adapter_model.safetensors"),
        (lambda d: write_config(d, good_config(r=0)), "r is 0"),
        (lambda d: write_config(d, good_config(lora_alpha=0)), "lora_alpha is 0"),
        (lambda d: write_config(d, good_config(lora_alpha=_DROP)), "lora_alpha is None"),
        (
            lambda d: write_config(d, good_config(task_type="TaskType.CAUSAL_LM")),
            "task_type is 'TaskType.CAUSAL_LM'",
        ),
        (lambda d: write_config(d, good_config(task_type=None)), "task_type is None"),
        (lambda d: write_config(d, good_config(peft_type="PeftType.LORA")), "peft_type"),
        (lambda d: write_config(d, good_config(r=8)), "does not match r=8"),
        (lambda d: (d / ADAPTER_CONFIG).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / ADAPTER_WEIGHTS).write_bytes(b"garbage"), "not a readable safetensors"),
    ],
)
def test_defects_are_refused_with_a_clear_message(tmp_path, mutate, needle):
    d = make_adapter(tmp_path / "a")
    mutate(d)
    with pytest.raises(AdapterError) as err:
        validate_adapter(d)
    assert needle in str(err.value)
    assert str(d) in str(err.value)


def test_wrong_or_missing_base_model(tmp_path):
    d = make_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match="different base model"):
        validate_adapter(d, expected_base="Qwen/Qwen3-8B")
    write_config(d, good_config(base_model_name_or_path=None))
    validate_adapter(d)  # no expectation: fine
    with pytest.raises(AdapterError, match="base_model_name_or_path is not set"):
        validate_adapter(d, expected_base=BASE)


def test_all_zero_lora_b_is_a_no_op_adapter(tmp_path):
    d = make_adapter(tmp_path / "a", zero_b=True)
    with pytest.raises(AdapterError, match="all of 4 lora_B tensors are all zero"):
        validate_adapter(d)
    assert validate_adapter(d, allow_zero_tensors=True).lora_tensors == 8


def test_one_zero_lora_b_is_reported(tmp_path):
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "base_model.model.l0.q_proj.lora_A.weight": torch.randn(4, 8, generator=gen),
        "base_model.model.l0.q_proj.lora_B.weight": torch.randn(8, 4, generator=gen),
        "base_model.model.l1.q_proj.lora_A.weight": torch.randn(4, 8, generator=gen),
        "base_model.model.l1.q_proj.lora_B.weight": torch.zeros(8, 4),
    }
    d = make_adapter(tmp_path / "a", tensors=tensors)
    with pytest.raises(AdapterError, match=r"1 of 2 lora_B .*l1\.q_proj"):
        validate_adapter(d)


def test_non_finite_and_non_lora_weights_are_refused(tmp_path):
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(8, 4, generator=gen)
    b[0, 0] = float("nan")
    d = make_adapter(
        tmp_path / "nan",
        tensors={
            "m.q_proj.lora_A.weight": torch.randn(4, 8, generator=gen),
            "m.q_proj.lora_B.weight": b,
        },
    )
    with pytest.raises(AdapterError, match="NaN or infinite"):
        validate_adapter(d)
    full = make_adapter(tmp_path / "full", tensors={"model.embed.weight": torch.randn(4, 4)})
    with pytest.raises(AdapterError, match="no LoRA tensors"):
        validate_adapter(full)


def test_bf16_weights_are_checked(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors = {
        "m.q_proj.lora_A.weight": torch.randn(4, 8, generator=gen).to(torch.bfloat16),
        "m.q_proj.lora_B.weight": torch.randn(8, 4, generator=gen).to(torch.bfloat16),
    }
    d = make_adapter(tmp_path / "a", tensors=tensors)
    assert validate_adapter(d).lora_tensors == 2


def test_rank_pattern_allows_per_module_ranks(tmp_path):
    gen = torch.Generator().manual_seed(4)
    tensors = {
        "m.q_proj.lora_A.weight": torch.randn(4, 8, generator=gen),
        "m.q_proj.lora_B.weight": torch.randn(8, 4, generator=gen),
        "m.v_proj.lora_A.weight": torch.randn(2, 8, generator=gen),
        "m.v_proj.lora_B.weight": torch.randn(8, 2, generator=gen),
    }
    d = make_adapter(
        tmp_path / "a", tensors=tensors, config=good_config(rank_pattern={"v_proj": 2})
    )
    assert validate_adapter(d).r == 4


# --------------------------------------------------------------------------- repair


def verl_071_export(root: Path, *, task_type="TaskType.CAUSAL_LM") -> Path:
    """What verl 0.7.1's model merger wrote: alpha 0, enum task_type, no base model."""
    cfg = good_config(lora_alpha=0, task_type=task_type, base_model_name_or_path=None)
    return make_adapter(root, config=cfg)


def test_repair_verl_071_export(tmp_path):
    d = verl_071_export(tmp_path / "a")
    with pytest.raises(AdapterError):
        validate_adapter(d)
    changes = repair_adapter(d, lora_alpha=16, base_model=BASE)
    assert changes == [
        "task_type: 'TaskType.CAUSAL_LM' -> 'CAUSAL_LM'",
        "lora_alpha: 0 -> 16",
        f"base_model_name_or_path: None -> '{BASE}'",
    ]
    cfg = read_config(d)
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["lora_alpha"] == 16
    assert isinstance(cfg["lora_alpha"], int)
    assert validate_adapter(d, expected_base=BASE).lora_alpha == 16
    assert repair_adapter(d, lora_alpha=32) == []  # idempotent; a set alpha is kept
    assert read_config(d)["lora_alpha"] == 16


@pytest.mark.parametrize("task_type", [_DROP, None, "causal_lm", "TaskType.CAUSAL_LM"])
def test_repair_task_type_spellings(tmp_path, task_type):
    cfg = good_config(task_type=task_type)
    d = make_adapter(tmp_path / "a", config=cfg)
    changes = repair_adapter(d)
    shown = None if task_type is _DROP else task_type
    assert changes == [f"task_type: {shown!r} -> 'CAUSAL_LM'"]
    assert read_config(d)["task_type"] == "CAUSAL_LM"


def test_repair_peft_type_enum(tmp_path):
    d = make_adapter(tmp_path / "a", config=good_config(peft_type="PeftType.LORA"))
    assert repair_adapter(d) == ["peft_type: 'PeftType.LORA' -> 'LORA'"]


def test_repair_refuses_what_it_cannot_know(tmp_path):
    d = verl_071_export(tmp_path / "a")
    before = (d / ADAPTER_CONFIG).read_bytes()
    with pytest.raises(AdapterError, match="lora_alpha is 0 and no value was given"):
        repair_adapter(d)
    assert (d / ADAPTER_CONFIG).read_bytes() == before  # nothing half-written
    with pytest.raises(AdapterError, match="positive number"):
        repair_adapter(d, lora_alpha=-1)
    other = make_adapter(tmp_path / "b", config=good_config(task_type="SEQ_CLS"))
    with pytest.raises(AdapterError, match="refusing to rewrite"):
        repair_adapter(other)
    relabel = make_adapter(tmp_path / "c")
    with pytest.raises(AdapterError, match="refusing to relabel"):
        repair_adapter(relabel, base_model="Qwen/Qwen3-8B")


def test_repair_writes_atomically(tmp_path, monkeypatch):
    d = verl_071_export(tmp_path / "a")
    before = (d / ADAPTER_CONFIG).read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        repair_adapter(d, lora_alpha=16)
    assert (d / ADAPTER_CONFIG).read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


# --------------------------------------------------------------------------- names, lineage


def test_sha12_follows_the_weights_only(tmp_path):
    a = make_adapter(tmp_path / "a", seed=0)
    b = make_adapter(tmp_path / "b", seed=1)
    assert adapter_sha12(a) != adapter_sha12(b)
    moved = tmp_path / "elsewhere"
    shutil.copytree(a, moved)
    write_config(moved, good_config(lora_alpha=32))
    assert adapter_sha12(moved) == adapter_sha12(a)
    with pytest.raises(AdapterError, match="not a directory"):
        adapter_sha12(tmp_path / "nope")


def test_lineage_roundtrip(tmp_path):
    d = make_adapter(tmp_path / "a")
    facts = {"variant": "templated", "teacher": {"model": "templated"}, "upweight": 12}
    path = write_lineage(d, facts)
    assert path == d / LINEAGE_FILE
    got = read_lineage(d)
    assert got["variant"] == "templated" and got["teacher"] == {"model": "templated"}
    assert got["adapter_sha12"] == adapter_sha12(d)
    assert got["adapter_name"] == adapter_name(d)
    assert path.read_text().endswith("\n")


def test_lineage_refusals(tmp_path):
    d = make_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match="missing lineage.json"):
        read_lineage(d)
    assert read_lineage(d, required=False) == {}
    with pytest.raises(AdapterError, match="weights give"):
        write_lineage(d, {"adapter_sha12": "000000000000"})
    with pytest.raises(AdapterError, match="not JSON-serialisable"):
        write_lineage(d, {"when": object()})
    # lineage copied next to other weights: stale
    write_lineage(d, {"variant": "v"})
    other = make_adapter(tmp_path / "b", seed=9)
    shutil.copy(d / LINEAGE_FILE, other / LINEAGE_FILE)
    with pytest.raises(AdapterError, match="belongs to other weights"):
        read_lineage(other)


# --------------------------------------------------------------------------- command line


def test_command_line(tmp_path, capsys):
    from coop_dag.training.adapters import main

    d = verl_071_export(tmp_path / "a")
    assert main(["validate", str(d)]) == 1
    assert "lora_alpha is 0" in capsys.readouterr().err
    assert main(["repair", str(d), "--lora-alpha", "16", "--base", BASE]) == 0
    assert "lora_alpha: 0 -> 16" in capsys.readouterr().out
    assert main(["validate", str(d), "--base", BASE]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["adapter_name"] == adapter_name(d)
    assert "no lineage.json" in captured.err
    assert main(["name", str(d)]) == 0
    assert capsys.readouterr().out.strip() == adapter_name(d)
