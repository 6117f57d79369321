"""``lora_checkpoint`` trained by verl: what the real run (tests/e2e/test_verl_real.py, verl 0.9.1
on the CPU) cannot reach, against a fake verl environment
(``tests/fixtures/verl_fake/fake_verl.py``): a trainer that fails (the asset fails with the
command and the log tail), a trainer killed after its last save (the checkpoint is reused, not
trained again), upweighted rows sent as copies, the recipe's mapping onto multi-GPU configs,
and checkpoint records.

A run cancelled while verl trains stops verl's whole process group, through Dagster's own
cancellation path. With the fake, the Pipes path is exercised as well: the fake reports through
``coop_dag.training.verl_pipes.Reporter``, as verl's rank 0 does.

The fake stands in for verl's python (``TrainingResource(kind="verl", verl_python=...)``): it
parses the real torchrun command line and Hydra overrides (refusing keys verl 0.9.1's
``sft_trainer_engine`` config does not have), builds ``TitoSFTDataset`` through
``data.custom_cls`` as verl does, counts steps as verl's ``SFTTrainer`` does, and writes
verl's output layout (``global_step_N/`` with ``lora_train_meta.json``, the checkpoint
tracker, the model merger's ``lora_adapter/`` with a null base model). Nothing is trained.

The student is tiny-qwen3 and its TITO rows come from tests/training/verl_fixtures.py (shared with
the real run).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag import REPO_ROOT  # noqa: E402
from coop_dag.tito.parquet import write_parquet  # noqa: E402
from coop_dag.training.adapters import read_lineage  # noqa: E402
from coop_dag.training.recipes import get_recipe  # noqa: E402
from coop_dag.training.verl import train_lora_verl  # noqa: E402
from coop_dag.training.verl_config import DATASET_MODULE, VerlError  # noqa: E402
from coop_dag.training.verl_launch import VerlLauncher  # noqa: E402
from coop_dag.training.verl_recipe import config_for_recipe  # noqa: E402
from coop_dag.training.verl_run import (  # noqa: E402
    DONE_FILE,
    RUN_RECORD,
    TRACKER_FILE,
    _start_run,
    finished_checkpoint,
    run_record,
)
from tests.training.test_train import meta_for, rows_for  # noqa: E402  (TITO row helpers)
from tests.training.verl_fixtures import (  # noqa: E402
    VARIANT,
    lora_assets,
    lora_resources,
    tiny_fixture,  # noqa: F401  (fixture "tiny")
    tiny_variant,
    tito_fixture,  # noqa: F401  (fixture "tito")
)

FAKE = REPO_ROOT / "tests" / "fixtures" / "verl_fake" / "fake_verl.py"
TORCHRUN = [
    "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
    "-m", "verl.trainer.sft_trainer",
]  # fmt: skip
TRAIN_ROWS, VAL_ROWS = 12, 4
# tiny-test: lora_r 4, lora_alpha 16, lr 2e-2, 2 epochs, 1 row per step -> 12 x 2 steps
STEPS = 24


@pytest.fixture()
def verl_python(tmp_path, monkeypatch):
    """verl's python: a wrapper running the fake; its calls are recorded in calls.jsonl."""
    wrapper = tmp_path / "verl-env" / "bin" / "python"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("FAKE_VERL_RECORD", str(tmp_path / "calls.jsonl"))
    fakes = ("FAKE_VERL_FAIL", "FAKE_VERL_DIE_AFTER_SAVE", "FAKE_VERL_NO_TRAIN", "FAKE_VERL_HANG")
    for name in fakes:
        monkeypatch.delenv(name, raising=False)
    return wrapper


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def fake_verl_resources(tmp_path: Path, verl_python: Path, serving_url: str) -> dict:
    """``lora_checkpoint``'s resources, training with the fake verl at `verl_python`."""
    from resources.training import TrainingResource

    training = TrainingResource(
        kind="verl",
        verl_python=str(verl_python),
        check_gpus=False,  # the fake verl runs on the CPU
        adapters_dir=str(tmp_path / "adapters"),
        work_dir=str(tmp_path / "work"),
        probe_prompts=2,
        probe_max_new_tokens=16,
    )
    return lora_resources(tmp_path, training, serving_url)


def materialize(tmp_path, tito, verl_python, monkeypatch, *, raise_on_error=True):
    import dagster as dg
    import serve_helpers

    from assets import training as asset_module

    monkeypatch.setitem(asset_module.VARIANTS, VARIANT, tiny_variant())
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        lora_assets(tito),
        partition_key=VARIANT,
        instance=instance,
        raise_on_error=raise_on_error,
        resources=fake_verl_resources(tmp_path, verl_python, serve_helpers.server().url),
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
    assert "-m coop_dag.training.verl_pipes --export-to " in command
    assert "model.lora_alpha=16" in command
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
    assert lineage["train_loss"] is not None  # the killed attempt's metrics give the curve
    # the export alone ran through Pipes too: its report reached the materialization
    meta = output_meta(result)
    assert meta["verl_adapter_path"] == lineage["verl_export"]
    assert [p["step"] for p in meta["verl_loss_curve"]["train"]] == list(range(1, STEPS + 1))
    assert meta["verl_steps"] == STEPS and meta["verl_resumed_from_step"] == 0
    assert any(m.startswith("verl export: ") for m in messages)  # a Pipes log line

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
    (train_call,) = calls(tmp_path)  # training, then the export in the same launch
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
    _start_run(tmp_path, run_record(cfg))
    assert not (tmp_path / TRACKER_FILE).exists()  # the stale tracker cannot pass for ours
    (tmp_path / TRACKER_FILE).write_text(str(STEPS))  # as verl writes it after its last save
    assert finished_checkpoint(cfg) == tmp_path / f"global_step_{STEPS}"
    other = config_for_recipe(
        get_recipe("tiny-test", lora_r=8), train_files="/d/train.parquet", model_path="/m",
        output_dir=tmp_path, train_rows=12,
    )  # fmt: skip
    assert finished_checkpoint(other) is None


def test_a_run_recorded_before_the_package_move_is_still_finished(tmp_path):
    """Issue 18 moved `coop_dag.tito_dataset` to `coop_dag.tito.dataset`; the dataset module is
    in verl's overrides and so in the run record: a run recorded under the old name is the
    same run (reused when finished, resumed when not), never trained again for the move."""
    import json

    cfg = config_for_recipe(
        get_recipe("tiny-test"), train_files="/d/train.parquet", model_path="/m",
        output_dir=tmp_path, train_rows=12,
    )  # fmt: skip
    record = run_record(cfg)
    assert any(DATASET_MODULE in o for o in record["overrides"])
    old = json.loads(json.dumps(record).replace(DATASET_MODULE, "pkg://coop_dag.tito_dataset"))
    assert old != record
    (tmp_path / RUN_RECORD).write_text(json.dumps(old))
    (tmp_path / f"global_step_{STEPS}").mkdir()
    (tmp_path / TRACKER_FILE).write_text(str(STEPS))
    assert finished_checkpoint(cfg) == tmp_path / f"global_step_{STEPS}"
    _start_run(tmp_path, record, resume=True)  # the same run: its tracker is kept
    assert (tmp_path / TRACKER_FILE).is_file()
    other = json.loads(json.dumps(record).replace(DATASET_MODULE, "pkg://elsewhere.dataset"))
    (tmp_path / RUN_RECORD).write_text(json.dumps(other))
    assert finished_checkpoint(cfg) is None


# --------------------------------------------------------------------------- cancellation

CANCEL_CHILD = """
import sys, threading, time
sys.path[:0] = {paths!r}
from pathlib import Path
import dagster as dg
from dagster._core.execution.run_cancellation_thread import start_run_cancellation_thread
import test_verl_training as t
from assets import training as asset_module
from tests.training.verl_fixtures import VARIANT, lora_assets, tiny_variant

asset_module.VARIANTS[VARIANT] = tiny_variant()
instance = dg.DagsterInstance.get()  # DAGSTER_HOME: shared with the test


def watch():  # what `dagster api execute_run` starts for every run: it sends SIGINT on cancel
    while not instance.get_runs(limit=1):
        time.sleep(0.2)
    start_run_cancellation_thread(instance, instance.get_runs(limit=1)[0].run_id)


threading.Thread(target=watch, daemon=True).start()
tmp = Path({tmp!r})
result = dg.materialize(
    lora_assets(Path({tito!r})), partition_key=VARIANT, instance=instance,
    raise_on_error=False,
    resources=t.fake_verl_resources(tmp, Path({verl!r}), "http://127.0.0.1:9/v1"),
)
print("SUCCESS" if result.success else "FAILED", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_cancelling_the_run_stops_verl_and_its_children(tito, verl_python, tmp_path, monkeypatch):
    """The run is cancelled as the UI does it (the run is marked CANCELING in the instance);
    the run worker's cancellation thread interrupts the step, which stops verl's whole
    process group: the launcher and the worker it started."""
    import subprocess
    import time

    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_monitoring:\n  cancellation_thread_poll_interval_seconds: 1\n"
    )
    pids_file = tmp_path / "pids.json"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FAKE_VERL_HANG", str(pids_file))
    tests = Path(__file__).resolve().parent
    code = CANCEL_CHILD.format(
        paths=[str(tests), str(REPO_ROOT)], tmp=str(tmp_path), tito=str(tito),
        verl=str(verl_python),
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not pids_file.is_file():
            assert worker.poll() is None, worker.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the fake verl never started"
            time.sleep(0.2)
        pids = json.loads(pids_file.read_text())
        assert _alive(pids["fake"]) and _alive(pids["child"])
        with dg.DagsterInstance.get() as instance:
            (run,) = instance.get_runs()
            instance.report_run_canceling(run)
            out, _ = worker.communicate(timeout=120)
            status = instance.get_run_by_id(run.run_id).status
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "FAILED" in out, out[-3000:]
    assert status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    assert not _alive(pids["fake"]) and not _alive(pids["child"]), pids
    assert "sending interrupt to main thread" in out, out[-3000:]
    assert not (tmp_path / "adapters").exists()
