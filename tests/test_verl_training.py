"""``lora_checkpoint`` trained by verl: a contract test of what coop-dag sends to verl and what
it accepts back, against a fake verl environment (``tests/fixtures/verl_fake/fake_verl.py``).

The fake stands in for verl's python (``TrainingResource(kind="verl", verl_python=...)``): it
parses the real torchrun command line and Hydra overrides (refusing keys verl 0.7's
``sft_trainer_engine`` config does not have), builds ``TitoSFTDataset`` through
``data.custom_cls`` as verl does, counts steps as verl's ``SFTTrainer`` does, and writes
verl's output layout (``global_step_N/``, the checkpoint tracker, the model merger's
``lora_adapter/`` with ``lora_alpha: 0`` and no ``task_type``). Nothing is trained -- its LoRA
weights are random -- so this proves the plumbing and the contract (model path, data paths,
LoRA rank/alpha, steps, repair, lineage, reuse after a kill, failure reporting), not that
verl itself runs or learns: that needs a GPU host with verl (docs/cluster.md).

The student is tiny-qwen3 and the TITO rows come from tests/test_train.py's helpers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_train import meta_for, rows_for  # noqa: E402  (shared TITO row helpers)

from coop_dag import REPO_ROOT  # noqa: E402
from coop_dag.adapters import read_lineage, validate_adapter  # noqa: E402
from coop_dag.students import get_student  # noqa: E402
from coop_dag.tito import write_parquet  # noqa: E402
from coop_dag.train import get_recipe  # noqa: E402
from coop_dag.verl import (  # noqa: E402
    DONE_FILE,
    RUN_RECORD,
    TRACKER_FILE,
    VerlError,
    VerlLauncher,
    config_for_recipe,
    finished_checkpoint,
    parse_metrics,
    train_lora_verl,
)

FAKE = REPO_ROOT / "tests" / "fixtures" / "verl_fake" / "fake_verl.py"
TORCHRUN = [
    "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
    "-m", "verl.trainer.sft_trainer",
]  # fmt: skip
TRAIN_ROWS, VAL_ROWS = 12, 4
# tiny-test: lora_r 4, lora_alpha 16, lr 2e-2, 2 epochs, 1 row per step -> 12 x 2 steps
STEPS = 24
# what the embedded trainer's lineage.json holds (coop_dag.train.train_lora): the verl path
# must record the same facts
EMBEDDED_LINEAGE_KEYS = {
    "trainer", "trainer_version", "student", "student_kind", "base_model", "tokenizer_sha256",
    "chat_template_sha256", "parquet_data_version", "train_parquet", "train_parquet_sha256",
    "val_parquet", "val_parquet_sha256", "parquet_variant", "parquet_upweight", "parquet_strip",
    "recipe", "recipe_config", "seed", "run_key", "steps", "max_steps", "epochs", "train_rows",
    "val_rows", "prep", "tokens_seen", "trained_tokens", "train_loss", "initial_val_loss",
    "final_val_loss", "trainable_params", "total_params", "lora_r", "lora_alpha",
    "train_time_s", "resumed_from_step", "versions", "code_version", "adapter_sha12",
    "adapter_name",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return get_student("tiny-qwen3")


@pytest.fixture(scope="module")
def tito(tmp_path_factory, tiny):
    tok = tiny.load_tokenizer()
    d = tmp_path_factory.mktemp("tito")
    write_parquet(rows_for(tok, TRAIN_ROWS), d / "train.parquet", meta_for(tiny))
    write_parquet(rows_for(tok, VAL_ROWS, seed=7), d / "val.parquet", meta_for(tiny))
    return d


@pytest.fixture()
def verl_python(tmp_path, monkeypatch):
    """verl's python: a wrapper running the fake; its calls are recorded in calls.jsonl."""
    wrapper = tmp_path / "verl-env" / "bin" / "python"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("FAKE_VERL_RECORD", str(tmp_path / "calls.jsonl"))
    for name in ("FAKE_VERL_FAIL", "FAKE_VERL_DIE_AFTER_SAVE", "FAKE_VERL_NO_TRAIN"):
        monkeypatch.delenv(name, raising=False)
    return wrapper


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def materialize(tmp_path, tito, verl_python, monkeypatch, *, raise_on_error=True):
    import dagster as dg
    import serve_helpers

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
        dataclasses.replace(variant, student="tiny-qwen3", recipe="tiny-test"),
    )

    @dg.asset(partitions_def=variant_partitions, name="tito_parquet")
    def tito_parquet() -> dict:
        return {
            "train_path": str(tito / "train.parquet"),
            "val_path": str(tito / "val.parquet"),
            "metadata": meta_for(get_student("tiny-qwen3")),
            "data_version": "tito-dv",
            "student": "tiny-qwen3",
        }

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [tito_parquet, asset_module.lora_checkpoint],
        partition_key="templated",
        instance=instance,
        raise_on_error=raise_on_error,
        resources={
            "dataset": DatasetResource(),
            "training": TrainingResource(
                kind="verl",
                verl_python=str(verl_python),
                adapters_dir=str(tmp_path / "adapters"),
                work_dir=str(tmp_path / "work"),
                probe_prompts=2,
                probe_max_new_tokens=16,
            ),
            "serving": ServingResource(url=serve_helpers.server().url),
            "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        },
    )
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, messages


def run_dir_of(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "work" / "templated").glob("verl-*")
    return found


def output_meta(result) -> dict:
    mat = result.get_asset_materialization_events()[-1].event_specific_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


# --------------------------------------------------------------------------- the asset


def test_lora_checkpoint_trains_with_verl(tiny, tito, verl_python, tmp_path, monkeypatch):
    result, messages = materialize(tmp_path, tito, verl_python, monkeypatch)
    assert result.success
    run = run_dir_of(tmp_path)

    # what verl was sent
    train_call, merge_call = calls(tmp_path)
    assert train_call["mode"] == "train" and merge_call["mode"] == "merge"
    assert train_call["argv"][: len(TORCHRUN)] == TORCHRUN
    ov = train_call["overrides"]
    assert ov["model.path"] == str(tiny.model_dir)
    assert ov["data.train_files"] == str(run / "data" / "train.parquet")
    assert ov["data.val_files"] == str(run / "data" / "val.parquet")
    assert (ov["data.custom_cls.path"], ov["data.custom_cls.name"]) == (
        "pkg://coop_dag.tito_dataset",
        "TitoSFTDataset",
    )
    assert (ov["model.lora_rank"], ov["model.lora_alpha"]) == (4, 16)
    assert ov["model.target_modules"] == "all-linear"
    assert ov["optim.lr"] == pytest.approx(2e-2)
    assert (ov["data.train_batch_size"], ov["data.micro_batch_size_per_gpu"]) == (1, 1)
    assert (ov["data.max_length"], ov["data.truncation"]) == (512, "left")
    assert ov["trainer.total_epochs"] == 2 and "trainer.total_training_steps" not in ov
    assert ov["trainer.default_local_dir"] == str(run / "checkpoints")
    assert ov["trainer.resume_mode"] == "disable" and ov["trainer.experiment_name"] == "templated"
    assert ov["optim.weight_decay"] == 0.0 and ov["optim.lr_scheduler_type"] == "constant"
    assert train_call["pythonpath"] == str(REPO_ROOT)  # pkg://coop_dag... imports there
    # ... and what verl made of it: every row, 12 steps an epoch, 2 epochs
    assert (train_call["dataset_len"], train_call["val_len"]) == (TRAIN_ROWS, VAL_ROWS)
    assert (train_call["steps_per_epoch"], train_call["total_steps"]) == (TRAIN_ROWS, STEPS)
    assert train_call["weights"] == [1.0]
    # the prepared rows come from the variant's TITO parquet, for its tokenizer
    meta = json.loads(pq.read_schema(run / "data" / "train.parquet").metadata[b"coop_dag.tito"])
    assert meta["source"] == str(tito / "train.parquet")
    assert meta["tokenizer"]["sha256"] == tiny.tokenizer_sha256
    assert merge_call["local_dir"] == str(run / "checkpoints" / f"global_step_{STEPS}")
    # the config record written into the run dir
    assert "lora_rank: 4" in (run / "verl_config.yaml").read_text()
    assert "verl.trainer.sft_trainer" in (run / "verl_command.txt").read_text()

    # what came back: verl's export repaired (alpha 0 -> the recipe's), then published
    export = json.loads((run / "merged" / "lora_adapter" / "adapter_config.json").read_text())
    assert export["lora_alpha"] == 16 and export["task_type"] == "CAUSAL_LM"
    out = result.output_for_node("lora_checkpoint")
    final = tmp_path / "adapters" / "templated" / out["adapter_name"]
    assert out["adapter_dir"] == str(final)
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["lora_alpha"] == 16 and config["r"] == 4
    assert config["base_model_name_or_path"] == str(tiny.model_dir)
    info = validate_adapter(final, expected_base=str(tiny.model_dir))
    assert info.lora_alpha == 16 and info.name == out["adapter_name"]

    lineage = read_lineage(final)
    assert EMBEDDED_LINEAGE_KEYS <= set(lineage)
    assert lineage["trainer"] == "verl" and out["facts"]["trainer"] == "verl"
    assert lineage["steps"] == lineage["max_steps"] == STEPS and lineage["epochs"] == 2
    assert lineage["lora_alpha"] == 16 and lineage["lora_r"] == 4
    assert "lora_alpha: 0 -> 16" in lineage["verl_export_repairs"]
    assert "task_type: None -> 'CAUSAL_LM'" in lineage["verl_export_repairs"]
    assert lineage["train_parquet"] == str(tito / "train.parquet")
    assert lineage["parquet_data_version"] == "tito-dv" and lineage["recipe"] == "tiny-test"
    assert lineage["base_model"] == str(tiny.model_dir)
    assert lineage["variant"] == "templated" and lineage["held_out_repos"]
    assert lineage["verl_config"]["model"]["lora_rank"] == 4
    assert lineage["probe_adapter_rate"] == out["probe_adapter"]["rate"]
    assert lineage["train_loss"] == pytest.approx(2.0 * 0.9**22, rel=0.2)  # last 5 steps
    assert lineage["final_val_loss"] == pytest.approx(1.5 * 0.9**STEPS, abs=1e-4)
    assert lineage["trainable_params"] > 0 and lineage["tokens_seen"] > 0

    meta = output_meta(result)
    assert meta["trainer"] == "verl" and meta["steps"] == STEPS
    assert meta["lineage"]["trainer"] == "verl"
    assert "data:image/png;base64," in meta["loss_curve"]
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["adapter_weights_usable"] and checks["adapter_output_differs_from_base"]
    assert not checks["validation_loss_fell"]  # verl reports no loss before training (WARN)
    # verl's output was streamed into the run's log, line by line
    assert any(m.startswith(f"verl[templated] step:{STEPS} - train/loss:") for m in messages)
    assert any("repaired verl export: lora_alpha: 0 -> 16" in m for m in messages)


def test_a_failing_verl_fails_the_asset_with_the_command_and_log_tail(
    tito, verl_python, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_VERL_FAIL", "3")
    with pytest.raises(VerlError) as err:
        materialize(tmp_path, tito, verl_python, monkeypatch)
    message = str(err.value)
    assert message.startswith("verl sft_trainer failed (exit code 3): ")
    command = message.splitlines()[0]
    assert str(verl_python) in command and " -m torch.distributed.run " in command
    assert "-m verl.trainer.sft_trainer" in command and "model.lora_alpha=16" in command
    tail = message.split("--- last 60 lines ---\n", 1)[1].splitlines()
    assert tail[-2:] == [
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: fake verl: CUDA out of memory",
    ]
    assert tail[0] == "fake verl: warming up 22"  # only the tail, not the whole output
    assert not (tmp_path / "adapters").exists()


def test_a_run_killed_after_verl_saved_its_final_checkpoint_is_not_trained_again(
    tito, verl_python, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_VERL_DIE_AFTER_SAVE", "1")
    with pytest.raises(VerlError, match=r"exit code -9"):
        materialize(tmp_path, tito, verl_python, monkeypatch)
    run = run_dir_of(tmp_path)
    ckpt = run / "checkpoints"
    assert (ckpt / f"global_step_{STEPS}").is_dir() and (ckpt / TRACKER_FILE).is_file()
    assert (ckpt / RUN_RECORD).is_file() and not (ckpt / DONE_FILE).exists()

    # rerun: a fake that refuses to train; the finished checkpoint is merged and published
    monkeypatch.delenv("FAKE_VERL_DIE_AFTER_SAVE")
    monkeypatch.setenv("FAKE_VERL_NO_TRAIN", "1")
    result, messages = materialize(tmp_path, tito, verl_python, monkeypatch)
    assert result.success
    assert [c["mode"] for c in calls(tmp_path)] == ["train", "merge"]  # first run, then merge
    assert any("verl already finished this run" in m for m in messages)
    out = result.output_for_node("lora_checkpoint")
    lineage = read_lineage(out["adapter_dir"])
    assert lineage["verl_reused_checkpoint"] is True and lineage["steps"] == STEPS
    assert lineage["train_loss"] is not None  # the killed attempt's log still gives the curve

    # and once published, a third run reuses the finished result without starting verl
    result, _ = materialize(tmp_path, tito, verl_python, monkeypatch)
    assert result.success and len(calls(tmp_path)) == 2
    assert output_meta(result)["reused_finished_run"] is True
    assert result.output_for_node("lora_checkpoint")["adapter_name"] == out["adapter_name"]


# --------------------------------------------------------------------------- no Dagster


def test_weighted_rows_reach_verl_as_copies(tiny, verl_python, tmp_path):
    """verl's SFT loss has no per-row weight: an upweighted row is sent as copies."""
    tok = tiny.load_tokenizer()
    rows = rows_for(tok, 4, weight=1.0) + rows_for(tok, 2, seed=3, weight=3.0)
    write_parquet(rows, tmp_path / "train.parquet", meta_for(tiny))
    result = train_lora_verl(
        tiny,
        tmp_path / "train.parquet",
        None,
        get_recipe("tiny-test", epochs=1),
        tmp_path / "work",
        VerlLauncher(python=str(verl_python)),
    )
    (train_call, _) = calls(tmp_path)
    assert train_call["dataset_len"] == 4 + 2 * 3 and train_call["weights"] == [1.0]
    assert "data.val_files" not in train_call["overrides"]
    assert result.steps == 10 and result.lineage["trainer"] == "verl"
    assert result.lineage["prep"]["expanded_copies"] == 4

    rows = rows_for(tok, 4, weight=1.5)
    write_parquet(rows, tmp_path / "frac.parquet", meta_for(tiny))
    with pytest.raises(VerlError, match="no per-row weight"):
        train_lora_verl(
            tiny, tmp_path / "frac.parquet", None, "tiny-test", tmp_path / "work",
            VerlLauncher(python=str(verl_python)),
        )  # fmt: skip


def test_recipe_to_verl_config(tmp_path):
    common = dict(train_files="/d/train.parquet", model_path="/m", output_dir=tmp_path)
    # epochs: the recipe's, no explicit step count
    cfg = config_for_recipe(get_recipe("tiny-test"), train_rows=12, **common)
    assert (cfg.total_epochs, cfg.total_training_steps, cfg.expected_total_steps()) == (2, None, 24)
    # max_steps: verl's total_training_steps, with enough epochs for verl's loop to get there
    cfg = config_for_recipe(get_recipe("tiny-test", max_steps=30), train_rows=12, **common)
    assert (cfg.total_epochs, cfg.total_training_steps) == (3, 30)
    assert "trainer.total_training_steps=30" in cfg.overrides()
    # a fractional epoch count trains as many steps as the embedded trainer would
    cfg = config_for_recipe(get_recipe("tiny-test", epochs=1.5), train_rows=12, **common)
    assert (cfg.total_epochs, cfg.total_training_steps) == (2, 18)
    # rows per step = batch_size x grad_accum; on 2 GPUs each gets half
    recipe = get_recipe("tiny-test", batch_size=2, grad_accum=2)
    cfg = config_for_recipe(recipe, train_rows=12, nproc_per_node=2, **common)
    assert (cfg.train_batch_size, cfg.micro_batch_size_per_gpu) == (4, 2)
    assert cfg.steps_per_epoch() == 3
    with pytest.raises(VerlError, match="no verl counterpart"):
        config_for_recipe(get_recipe("tiny-test", lr_scheduler="linear"), **common)
    with pytest.raises(VerlError, match="not divisible by nproc_per_node=2"):
        config_for_recipe(get_recipe("tiny-test"), nproc_per_node=2, **common)


def test_a_checkpoint_of_another_run_is_never_taken_for_finished(tmp_path):
    recipe = get_recipe("tiny-test")
    cfg = config_for_recipe(
        recipe, train_files="/d/train.parquet", model_path="/m", output_dir=tmp_path,
        train_rows=12,
    )  # fmt: skip
    (tmp_path / f"global_step_{STEPS}").mkdir()
    (tmp_path / TRACKER_FILE).write_text(str(STEPS))
    assert finished_checkpoint(cfg) is None  # no record of what was trained there
    from coop_dag.verl import _start_run, run_record

    _start_run(tmp_path, run_record(cfg))
    assert not (tmp_path / TRACKER_FILE).exists()  # the stale tracker cannot pass for ours
    (tmp_path / TRACKER_FILE).write_text(str(STEPS))  # as verl writes it after its last save
    assert finished_checkpoint(cfg) == tmp_path / f"global_step_{STEPS}"
    other = config_for_recipe(
        get_recipe("tiny-test", lora_r=8), train_files="/d/train.parquet", model_path="/m",
        output_dir=tmp_path, train_rows=12,
    )  # fmt: skip
    assert finished_checkpoint(other) is None


def test_parse_metrics():
    assert parse_metrics("step:3 - train/loss:0.5 - train/lr:1e-05 - note:x") == (
        3,
        {"train/loss": 0.5, "train/lr": 1e-05},
    )
    assert parse_metrics("[rank0]: step:24 - val/loss:0.25") == (24, {"val/loss": 0.25})
    assert parse_metrics("Epoch 1/2: 50%|##### | step:3") is None
