"""training.train (and its rows, loss, hf_trainer): recipes, row preparation, the weighted loss,
the embedded trainer end to end
(tiny-qwen3: a 2-layer random-init Qwen3 with the real tokenizer), resume after a kill,
refusals (tokenizer / template mismatch, empty or all-truncated sets, unknown student).

The parquet here is written directly in the documented TITO schema (short rows, so every
training run takes seconds): each row's output is a fixed token pattern a LoRA learns fast.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag.tito.dataset import TitoSFTDataset  # noqa: E402
from coop_dag.tito.parquet import write_parquet  # noqa: E402
from coop_dag.training.adapters import read_lineage, validate_adapter  # noqa: E402
from coop_dag.training.errors import (
    ChatTemplateMismatchError,
    EmptyTrainingSetError,
    RecipeError,  # noqa: E402
    TokenizerMismatchError,
    TrainError,
)
from coop_dag.training.hf_trainer import complete_checkpoints
from coop_dag.training.loss import (
    TitoCollator,
    loss_normaliser,
    step_loss,
    weighted_loss_terms,
)
from coop_dag.training.recipes import Recipe, get_recipe, load_recipes  # noqa: E402
from coop_dag.training.rows import prepare_rows
from coop_dag.training.students import StudentError, get_student  # noqa: E402
from coop_dag.training.train import train_lora


@pytest.fixture(scope="module")
def tiny():
    return get_student("tiny-qwen3")


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.load_tokenizer()


def meta_for(student, **over) -> dict:
    meta = {
        "format": "coop-dag.tito/v1",
        "variant": "test",
        "tokenizer": {"name": student.name, "sha256": student.tokenizer_sha256},
        "chat_template_sha256": student.chat_template_sha256,
        "upweight": {"factor": 1, "turns": 3, "mode": "weight"},
    }
    meta.update(over)
    return meta


def rows_for(tok, n: int, *, seed: int = 0, prompt_len: int = 24, weight: float = 1.0):
    """Rows whose prompt is varied text and whose output is one fixed plan-like sentence."""
    out_ids = tok.encode(
        "Plan: I'll edit src/app/core.py, you take src/app/cli.py.", add_special_tokens=False
    ) + [tok.convert_tokens_to_ids("<|im_end|>")]
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for i in range(n):
        text = " ".join(words[(seed + i + k) % len(words)] for k in range(prompt_len))
        prompt = tok.encode(f"Task {seed}-{i}: {text}", add_special_tokens=False)[:prompt_len]
        rows.append(
            {
                "input_ids": prompt,
                "output_ids": out_ids,
                "traj_id": f"demo/{seed}/{i}/agent1",
                "pair_id": f"demo/{seed}/{i}",
                "repo": "demo_task",
                "task_id": str(seed),
                "agent_id": "agent1",
                "turn_index": 0,
                "weight": weight,
                "upweight": 1,
                "source": "retokenised",
                "loss_spans": [[len(prompt), len(prompt) + len(out_ids)]],
                "span_turns": [0],
                "span_actions": [1],
            }
        )
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny, tok):
    d = tmp_path_factory.mktemp("tito")
    write_parquet(rows_for(tok, 12), d / "train.parquet", meta_for(tiny))
    write_parquet(rows_for(tok, 4, seed=7), d / "val.parquet", meta_for(tiny))
    return d


def quick(**over) -> Recipe:
    """tiny-test, shortened: a handful of 40-token rows."""
    values = {"max_steps": 8, "save_steps": 4, "max_val_rows": 4, "learning_rate": 2e-2}
    values.update(over)
    return get_recipe("tiny-test", **values)


# --------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------


def test_recipes_file_has_the_named_recipes():
    recipes = load_recipes()
    assert {"embedded-default", "tiny-test"} <= set(recipes)
    for r in recipes.values():
        assert r.lora_alpha > 0 and r.lora_r > 0 and r.upweight_mode in ("duplicate", "weight")
    default = recipes["embedded-default"]
    assert default.max_turn is not None and default.packing is True
    json.dumps(default.to_json())


def test_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="lora_alpha"):
        get_recipe("tiny-test", lora_alpha=0)
    bad = tmp_path / "r.yaml"
    bad.write_text("recipes:\n  x:\n    lora_rank: 4\n")
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipes(bad)
    bad.write_text("recipes:\n  x:\n    truncation: middle\n")
    with pytest.raises(RecipeError, match="truncation"):
        load_recipes(bad)


# --------------------------------------------------------------------------------------
# row preparation
# --------------------------------------------------------------------------------------


def packed_row(traj="t/a", weight=1.0):
    # turns 0, 1, 2 packed: ids 0..29, spans [5,10) [15,20) [25,30)
    ids = list(range(100, 130))
    return {
        "input_ids": ids[:25],
        "output_ids": ids[25:],
        "traj_id": traj,
        "turn_index": 0,
        "weight": weight,
        "loss_spans": [[5, 10], [15, 20], [25, 30]],
        "span_turns": [0, 1, 2],
    }


def test_prepare_max_turn_cuts_packed_rows():
    rows, st = prepare_rows([packed_row()], Recipe(name="t", max_turn=1))
    assert len(rows) == 1 and st.cut_max_turn == 1
    r = rows[0]
    assert r["loss_spans"] == [[5, 10], [15, 20]] and r["span_turns"] == [0, 1]
    assert r["input_ids"] + r["output_ids"] == list(range(100, 120))
    assert r["output_ids"] == list(range(115, 120))
    late = {**packed_row(), "loss_spans": [[25, 30]], "span_turns": [3], "turn_index": 3}
    rows, st = prepare_rows([late], Recipe(name="t", max_turn=1))
    assert rows == [] and st.dropped_max_turn == 1


def test_prepare_collapses_duplicates_or_expands_them():
    dup = [packed_row() for _ in range(12)]
    rows, st = prepare_rows(dup, Recipe(name="t", upweight_mode="weight"))
    assert len(rows) == 1 and rows[0]["weight"] == 12.0 and st.collapsed_duplicates == 11
    rows, st = prepare_rows(dup, Recipe(name="t", upweight_mode="duplicate"))
    assert len(rows) == 12 and all(r["weight"] == 1.0 for r in rows)
    rows, _ = prepare_rows([packed_row(weight=3.0)], Recipe(name="t", upweight_mode="duplicate"))
    assert len(rows) == 3


def test_prepare_packing_off_splits_and_on_merges():
    rows, st = prepare_rows([packed_row()], Recipe(name="t", packing=False))
    assert [r["span_turns"] for r in rows] == [[0], [1], [2]] and st.unpacked_rows_added == 2
    for r, end in zip(rows, (10, 20, 30), strict=True):
        assert r["input_ids"] + r["output_ids"] == list(range(100, 100 + end))
        assert r["loss_spans"] == [[end - 5, end]]
    again, st = prepare_rows(rows, Recipe(name="t", packing=True))
    assert len(again) == 1 and st.packed_rows_merged == 2
    assert again[0]["loss_spans"] == packed_row()["loss_spans"]
    # different weights never merge
    mixed = [dict(rows[0], weight=12.0), rows[1], rows[2]]
    assert len(prepare_rows(mixed, Recipe(name="t"))[0]) == 2


def test_prepare_truncation():
    row = packed_row()
    rows, st = prepare_rows([row], Recipe(name="t", max_length=8, truncation="left"))
    assert len(rows) == 1 and st.truncated == 1  # the last span survives a left cut
    rows, st = prepare_rows([row], Recipe(name="t", max_length=4, truncation="right"))
    assert rows == [] and st.dropped_truncated == 1
    with pytest.raises(TrainError, match="max_length"):
        prepare_rows([row], Recipe(name="t", max_length=8, truncation="error"))


# --------------------------------------------------------------------------------------
# the weighted loss
# --------------------------------------------------------------------------------------


def test_row_weights_scale_the_loss_and_weight_zero_gives_no_gradient(tiny, tok, tmp_path):
    rows = rows_for(tok, 2)
    rows[1]["output_ids"] = rows[1]["output_ids"][3:]  # a different target
    n_in = len(rows[1]["input_ids"])
    rows[1]["loss_spans"] = [[n_in, n_in + len(rows[1]["output_ids"])]]
    write_parquet(rows, tmp_path / "a.parquet", meta_for(tiny))
    ds = TitoSFTDataset(str(tmp_path / "a.parquet"), tok, {"pad_mode": "no_padding"})
    collate = TitoCollator(tok.pad_token_id)
    a, b = ds[0], ds[1]
    model = tiny.load_model()
    model.get_input_embeddings().weight.requires_grad_(False)  # (tied; keeps the test fast)

    def batch(items, weights):
        out = collate(items)
        out["weight"] = torch.tensor(weights, dtype=torch.float32)
        return out

    norm = loss_normaliser(ds, rows_per_step=2)

    def grads(items, weights):
        model.zero_grad()
        loss, _ = step_loss(model, batch(items, weights), norm)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def same(g1, g2, tol=1e-5):
        return all(torch.allclose(x, y, atol=tol) for x, y in zip(g1, g2, strict=True))

    # weight 0: no gradient from that row, the other row's is untouched
    loss_ab, g_ab = grads([a, b], [1.0, 0.0])
    loss_a, g_a = grads([a], [1.0])
    assert torch.allclose(loss_ab, loss_a, atol=1e-6) and same(g_ab, g_a, 1e-6)
    # weight 2 == the row twice in the step
    loss_w, g_w = grads([a, b], [2.0, 1.0])
    loss_d, g_d = grads([a, a, b], [1.0, 1.0, 1.0])
    assert torch.allclose(loss_w, loss_d, atol=1e-5) and same(g_w, g_d)
    # ... also when the row is alone in its step (a per-step normalisation would cancel it)
    loss_2, g_2 = grads([a], [2.0])
    assert torch.allclose(loss_2, 2 * loss_a, atol=1e-5)
    assert same(g_2, [2 * g for g in g_a])
    # the normaliser: rows per step x mean weighted trained targets
    targets = [int((it["labels"][1:] != -100).sum()) for it in (a, b)]
    assert norm == pytest.approx(2 * sum(targets) / 2)
    # logits only where trained == full logits
    with torch.no_grad():
        full = weighted_loss_terms(model, batch([a, b], [2.0, 1.0]), slice_logits=False)
        sliced = weighted_loss_terms(model, batch([a, b], [2.0, 1.0]), slice_logits=True)
    assert torch.allclose(full[0], sliced[0], rtol=1e-5) and full[1] == sliced[1]


# --------------------------------------------------------------------------------------
# training end to end
# --------------------------------------------------------------------------------------


def test_training_reduces_loss_and_writes_a_servable_adapter(tiny, tok, data, tmp_path):
    events = []
    result = train_lora(
        tiny,
        data / "train.parquet",
        data / "val.parquet",
        quick(),
        tmp_path,
        progress=events.append,
        data_version="dv-test",
        facts={"variant": "test"},
    )
    assert result.steps == 8 and not result.reused
    assert result.val_loss_fell, (result.initial_val_loss, result.final_val_loss)
    first, last = result.train_losses[0]["loss"], result.train_losses[-1]["loss"]
    assert last < first
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 8
    assert "eval" in kinds and "checkpoint" in kinds
    # the adapter: PEFT layout, alpha > 0, non-zero LoRA B, lineage, curve
    info = validate_adapter(result.adapter_dir, expected_base=str(tiny.model_dir))
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["lora_alpha"] == 16 and info.r == 4
    lineage = read_lineage(result.adapter_dir)
    for key in ("student", "tokenizer_sha256", "chat_template_sha256", "recipe", "seed"):
        assert lineage[key] not in (None, "")
    assert lineage["parquet_data_version"] == "dv-test" and lineage["steps"] == 8
    assert lineage["tokenizer_sha256"] == tiny.tokenizer_sha256
    assert lineage["adapter_name"] == info.name and lineage["variant"] == "test"
    curve = json.loads((result.adapter_dir / "loss_curve.json").read_text())
    assert len(curve["train"]) == 8 and curve["val"][0]["step"] == 0
    assert (result.adapter_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert result.adapter_dir.stat().st_mode & 0o777 == 0o755  # a server may run as another user
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in result.adapter_dir.iterdir())
    # PEFT loads it and it changes the model's output
    from peft import PeftModel

    base = tiny.load_model()
    ids = torch.tensor([rows_for(tok, 1, seed=3)[0]["input_ids"]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    # a finished run is reused, not retrained
    again = train_lora(tiny, data / "train.parquet", data / "val.parquet", quick(), tmp_path)
    assert again.reused and again.adapter_sha12 == result.adapter_sha12


def _weights(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_resume_after_a_kill_ends_with_the_same_weights(tiny, data, tmp_path):
    recipe = quick(max_steps=10, save_steps=3, lora_dropout=0.1, epochs=1.0)
    full = train_lora(tiny, data / "train.parquet", data / "val.parquet", recipe, tmp_path / "a")

    class Killed(RuntimeError):
        pass

    def kill_at_7(event):
        if event["event"] == "step" and event["step"] == 7:
            raise Killed("simulated kill at step 7")

    work = tmp_path / "b"
    with pytest.raises(Killed):
        train_lora(
            tiny, data / "train.parquet", data / "val.parquet", recipe, work, progress=kill_at_7
        )
    run_dir = next(p for p in work.iterdir() if p.is_dir())
    saved = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in saved][-1] == "checkpoint-6"  # steps 3 and 6 were saved
    assert not (run_dir / "adapter").exists()
    steps = []
    resumed = train_lora(
        tiny,
        data / "train.parquet",
        data / "val.parquet",
        recipe,
        work,
        progress=lambda e: steps.append(e["step"]) if e["event"] == "step" else None,
    )
    assert resumed.resumed_from_step == 6 and steps == [7, 8, 9, 10]
    assert resumed.steps == full.steps == 10
    a, b = _weights(full.adapter_dir), _weights(resumed.adapter_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert resumed.adapter_sha12 == full.adapter_sha12
    # the curve spans the whole run, the initial validation loss included
    assert [v["step"] for v in resumed.val_losses][0] == 0
    assert [t["step"] for t in resumed.train_losses] == list(range(1, 11))


@pytest.mark.faults
def test_a_training_run_killed_with_sigkill_resumes_to_the_same_weights(tiny, data, tmp_path):
    """A real SIGKILL of the training process at step 7 of 10 (no exception handler, finally
    or atexit runs): the checkpoints saved before it are complete, no adapter is published,
    and the rerun resumes from step 6 and ends with the weights of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    over = dict(max_steps=10, save_steps=3, lora_dropout=0.1, epochs=1.0)
    train, val = data / "train.parquet", data / "val.parquet"
    full = train_lora(tiny, train, val, quick(**over), tmp_path / "a")
    work = tmp_path / "b"
    values = {**quick(**over).__dict__}
    killed = subprocess.run(
        [sys.executable, "-c", f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from coop_dag.training.students import get_student
from coop_dag.training.train import train_lora
from coop_dag.training.recipes import Recipe

def kill_at_7(event):
    if event["event"] == "step" and event["step"] == 7:
        os.kill(os.getpid(), signal.SIGKILL)

train_lora(get_student("tiny-qwen3"), {str(train)!r}, {str(val)!r}, Recipe(**{values!r}),
           {str(work)!r}, progress=kill_at_7)
"""],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = next(p for p in work.iterdir() if p.is_dir())
    saved = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in saved] == ["checkpoint-3", "checkpoint-6"]
    assert not (run_dir / "adapter").exists()  # nothing half-trained is published
    steps = []
    resumed = train_lora(
        tiny, train, val, quick(**over), work,
        progress=lambda e: steps.append(e["step"]) if e["event"] == "step" else None,
    )  # fmt: skip
    assert resumed.resumed_from_step == 6 and steps == [7, 8, 9, 10]  # only what was missing
    assert resumed.adapter_sha12 == full.adapter_sha12
    a, b = _weights(full.adapter_dir), _weights(resumed.adapter_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------


def test_tokenizer_sha_mismatch_is_refused(tiny, tok, tmp_path):
    rows = rows_for(tok, 2)
    other = meta_for(tiny, tokenizer={"name": "smollm2", "sha256": "ab" * 32})
    write_parquet(rows, tmp_path / "other.parquet", other)
    with pytest.raises(TokenizerMismatchError, match="tokenizer sha256"):
        train_lora(tiny, tmp_path / "other.parquet", None, quick(), tmp_path / "w")
    write_parquet(rows, tmp_path / "bare.parquet", {"format": "coop-dag.tito/v1"})
    with pytest.raises(TokenizerMismatchError, match="no tokenizer sha256"):
        train_lora(tiny, tmp_path / "bare.parquet", None, quick(), tmp_path / "w")
    write_parquet(rows, tmp_path / "tmpl.parquet", meta_for(tiny, chat_template_sha256="cd" * 32))
    with pytest.raises(ChatTemplateMismatchError):
        train_lora(tiny, tmp_path / "tmpl.parquet", None, quick(), tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing was started


def test_empty_and_all_truncated_sets_are_refused(tiny, tok, tmp_path):
    write_parquet([], tmp_path / "empty.parquet", meta_for(tiny))
    with pytest.raises(EmptyTrainingSetError, match="no row"):
        train_lora(tiny, tmp_path / "empty.parquet", None, quick(), tmp_path / "w")
    write_parquet(rows_for(tok, 3, prompt_len=40), tmp_path / "long.parquet", meta_for(tiny))
    with pytest.raises(EmptyTrainingSetError, match="no training row left"):
        train_lora(
            tiny,
            tmp_path / "long.parquet",
            None,
            quick(max_length=16, truncation="right"),
            tmp_path / "w",
        )
    late = [dict(r, turn_index=3, span_turns=[3]) for r in rows_for(tok, 2)]
    write_parquet(late, tmp_path / "late.parquet", meta_for(tiny))
    with pytest.raises(EmptyTrainingSetError, match="max_turn=1"):
        train_lora(tiny, tmp_path / "late.parquet", None, quick(max_turn=1), tmp_path / "w")
    write_parquet(rows_for(tok, 2, weight=0.0), tmp_path / "zero.parquet", meta_for(tiny))
    with pytest.raises(EmptyTrainingSetError):
        train_lora(tiny, tmp_path / "zero.parquet", None, quick(), tmp_path / "w")


def test_unknown_student_is_the_registry_error(data, tmp_path):
    with pytest.raises(StudentError, match="unknown student 'nope'"):
        train_lora("nope", data / "train.parquet", None, quick(), tmp_path)


# --------------------------------------------------------------------------------------
# the Dagster asset
# --------------------------------------------------------------------------------------


def test_lora_checkpoint_asset(tiny, data, tmp_path, monkeypatch, vllm_server):
    import dataclasses

    import dagster as dg

    from assets import training as asset_module
    from assets.partitions import variant_partitions
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.serving import ServingResource
    from resources.training import TrainingResource

    variant = asset_module.VARIANTS["templated"]
    monkeypatch.setitem(
        asset_module.VARIANTS,
        "templated",
        # seed 3: the variant's seed is the training seed (recipe_for), whatever the recipe says
        dataclasses.replace(variant, student="tiny-qwen3", recipe="tiny-test", seed=3),
    )

    @dg.asset(partitions_def=variant_partitions, name="tito_parquet")
    def tito_parquet() -> dict:
        return {
            "train_path": str(data / "train.parquet"),
            "val_path": str(data / "val.parquet"),
            "metadata": meta_for(tiny),
            "data_version": "tito-dv",
            "student": "tiny-qwen3",
        }

    result = dg.materialize(
        [tito_parquet, asset_module.lora_checkpoint],
        partition_key="templated",
        resources={
            "dataset": DatasetResource(),
            "training": TrainingResource(
                adapters_dir=str(tmp_path / "adapters"),
                work_dir=str(tmp_path / "work"),
                probe_prompts=2,
                probe_max_new_tokens=16,
            ),
            "serving": ServingResource(url=vllm_server.url),
            "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        },
    )
    assert result.success
    out = result.output_for_node("lora_checkpoint")
    assert out["adapter_name"].startswith("student-") and out["base_model"] == "tiny-qwen3"
    final = tmp_path / "adapters" / "templated" / out["adapter_name"]
    assert out["adapter_dir"] == str(final) and (final / "adapter_model.safetensors").is_file()
    assert read_lineage(final)["probe_adapter_rate"] == out["probe_adapter"]["rate"]
    assert {"probe_base", "probe_adapter", "facts", "data_version"} <= set(out)
    assert out["facts"]["seed"] == 3 and read_lineage(final)["seed"] == 3
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["validation_loss_fell"] and checks["adapter_weights_usable"]
    assert checks["adapter_output_differs_from_base"]
    assert "first_turn_probe_rate" in checks
    mat = result.get_asset_materialization_events()[-1].event_specific_data.materialization
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["steps"] > 0 and "data:image/png;base64," in meta["loss_curve"]
