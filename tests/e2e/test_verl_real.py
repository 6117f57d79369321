"""Real verl 0.9.1 trains ``lora_checkpoint`` on this machine's CPU.

The ``verl-cpu`` trainer (`coop_dag.config.profiles`) through the asset, with nothing faked: verl's
own venv (``scripts/verl_venv.sh``, built here when missing), the torchrun command
`coop_dag.training.verl.train_command` builds (the cluster's command plus `CPU_OVERRIDES` and
`CPU_ENV`) running ``coop_dag.training.verl_pipes`` (verl's sft_trainer in process) through Dagster
Pipes, ``TitoSFTDataset`` through ``data.custom_cls``, verl's model merger (rank 0, in the
same process), the repair of its export (0.9.1: the base model only), validation,
publication and the asset checks. What rank 0 reported through Pipes -- a log line per step
of verl's loop, the loss curve and the exported adapter's path -- reaches the
materialization. The adapter is then loaded with PEFT in this (the core) venv: its logits
differ from the base model's and it fits the trained output better than the base does.

A verl run killed mid-training (its process group, from outside, once its first checkpoint
is saved) resumes from that checkpoint when launched again (no Dagster: the plain CLI path).

The student is tiny-qwen3 (a random 2-layer Qwen3: seconds per step); the TITO rows come
from tests/training/test_train.py's helpers (one fixed plan sentence as every output).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import serve_helpers

from coop_dag.serving.probe import first_turn_probe
from coop_dag.serving.server import serve_adapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag import REPO_ROOT  # noqa: E402
from coop_dag.config.profiles import local_verl_python  # noqa: E402
from coop_dag.tito.parquet import write_parquet  # noqa: E402
from coop_dag.training.adapters import read_lineage, validate_adapter  # noqa: E402
from coop_dag.training.students import get_student  # noqa: E402
from coop_dag.training.verl import (  # noqa: E402
    CPU_ENV,
    CPU_OVERRIDES,
    VerlLauncher,
    hydra_value,
    metrics_from_file,
    train_lora_verl,
)
from tests.training.test_train import meta_for, rows_for  # noqa: E402  (shared TITO row helpers)

pytestmark = pytest.mark.slow

TRAIN_ROWS, VAL_ROWS = 4, 2
STEPS = 8  # recipe tiny-test: 1 row per step, 2 epochs
VENV_SCRIPT = REPO_ROOT / "scripts" / "verl_venv.sh"
# what the embedded trainer's lineage.json holds (coop_dag.training.train.train_lora): the verl path
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
def verl_python() -> Path:
    """verl's python, from the venv scripts/verl_venv.sh builds (idempotent: a no-op when it
    is there). A venv that cannot be built or does not work fails with its path and the fix."""
    python = Path(local_verl_python())
    venv = python.parent.parent
    fix = f"rebuild it: rm -rf {venv} && bash scripts/verl_venv.sh (builds $COOP_DAG_VERL_VENV)"
    proc = subprocess.run(
        ["bash", str(VENV_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        pytest.fail(f"scripts/verl_venv.sh could not build verl's venv {venv}:\n{tail}\n{fix}")
    probe = subprocess.run(
        [str(python), "-c", "import verl, peft, torch, fastapi; print(verl.__version__)"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if probe.returncode != 0 or probe.stdout.strip() != "0.9.1":
        tail = "\n".join((probe.stdout + probe.stderr).splitlines()[-10:])
        pytest.fail(f"verl's venv {venv} is broken (import verl 0.9.1 failed):\n{tail}\n{fix}")
    return python


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


def materialize(tmp_path: Path, tito: Path, monkeypatch):
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
        resources={
            "dataset": DatasetResource(),
            # the trainer a laptop user selects; its python: the profile's (the local venv)
            "training": TrainingResource(
                kind="verl-cpu",
                adapters_dir=str(tmp_path / "adapters"),
                work_dir=str(tmp_path / "work"),
                probe_prompts=2,
                probe_max_new_tokens=16,
                probe_batch_size=2,
            ),
            # the probe runs on the session's vLLM, as in every lora_checkpoint
            "serving": ServingResource(url=serve_helpers.server().url),
            "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        },
    )
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, messages


def nll_on_outputs(model, rows: list[dict]) -> float:
    """Mean next-token NLL over the output ids of `rows` (what SFT trained)."""
    import torch

    losses = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"] + row["output_ids"]])
            labels = ids.clone()
            labels[0, : len(row["input_ids"])] = -100
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return sum(losses) / len(losses)


def test_verl_cpu_trains_exports_and_publishes_a_working_adapter(
    verl_python, tiny, tito, tmp_path, monkeypatch, vllm_server
):
    for name in ("COOP_DAG_VERL_PYTHON", "COOP_DAG_TRAINER", "COOP_DAG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    result, messages = materialize(tmp_path, tito, monkeypatch)
    assert result.success
    (run,) = (tmp_path / "work" / "templated").glob("verl-*")

    # the command: the cluster's, plus the CPU flags and environment, from verl's own venv
    command = (run / "verl_command.txt").read_text()
    head = (
        f"PYTHONPATH={REPO_ROOT} "
        + " ".join(f"{k}={v}" for k, v in sorted(CPU_ENV.items()))
        + f" {verl_python} -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1"
        f" -m coop_dag.training.verl_pipes --export-to {run / 'merged'} "
    )
    assert command.startswith(head), (head, command[: len(head) + 40])
    assert "DAGSTER_PIPES" not in command  # the session's variables are never recorded
    for key, value in CPU_OVERRIDES:
        assert f" {key}={hydra_value(value)}" in command
    for flag in (
        "data.custom_cls.path=pkg://coop_dag.tito.dataset",
        "data.custom_cls.name=TitoSFTDataset",
        f"model.path={tiny.model_dir}",
        "model.lora_rank=4",
        "model.lora_alpha=16",
    ):
        assert f" {flag} " in command

    # what verl did: our platform, every step, a falling loss, its checkpoint and merge
    log = (run / "verl.log").read_text()
    assert "Platform override from VERL_PLATFORM: cpu" in log
    metrics, resumed = metrics_from_file(run / "checkpoints")  # rank 0's record of verl's loop
    assert sorted(s for s, m in metrics.items() if "train/loss" in m) == list(range(1, STEPS + 1))
    assert resumed == 0
    assert (run / "checkpoints" / f"global_step_{STEPS}" / "lora_train_meta.json").is_file()
    # save_steps 2: a checkpoint every 2 steps, which a killed run resumes from
    assert (run / "checkpoints" / "global_step_2").is_dir()
    # verl ran in its output dir: Hydra's outputs/ land there, not in the caller's cwd
    assert list((run / "checkpoints").glob("outputs/*/*/.hydra/overrides.yaml"))
    out = result.output_for_node("lora_checkpoint")
    final = tmp_path / "adapters" / "templated" / out["adapter_name"]
    lineage = read_lineage(final)
    losses = [t["loss"] for t in json.loads((final / "loss_curve.json").read_text())["train"]]
    # per-step losses of 8 single-row steps are noisy; that it learned is the NLL check below
    assert len(losses) == STEPS and min(losses[1:]) < losses[0]
    assert lineage["trainer"] == "verl" and lineage["verl_device"] == "cpu"
    assert lineage["steps"] == lineage["max_steps"] == STEPS
    assert lineage["final_val_loss"] is not None  # verl validated after the last step
    assert EMBEDDED_LINEAGE_KEYS <= set(lineage)
    assert lineage["parquet_data_version"] == "tito-dv" and lineage["recipe"] == "tiny-test"
    assert lineage["base_model"] == str(tiny.model_dir) and lineage["lora_alpha"] == 16
    mat = result.get_asset_materialization_events()[-1].event_specific_data.materialization
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["trainer"] == "verl" and meta["steps"] == STEPS
    assert "data:image/png;base64," in meta["loss_curve"]

    # Pipes: rank 0 logged each step of verl's loop and reported the loss curve and export
    step_logs = [m for m in messages if m.startswith("verl step ") and ": loss " in m]
    assert [m.split(":")[0] for m in step_logs] == [
        f"verl step {s}/{STEPS}" for s in range(1, STEPS + 1)
    ]
    assert all(re.search(r", lr 0\.02, [0-9.]+ s\b", m) for m in step_logs), step_logs
    assert f"verl step {STEPS}/{STEPS}: val_loss " in "\n".join(messages)
    assert "[pipes] external process successfully opened dagster pipes." in messages
    curve = meta["verl_loss_curve"]
    assert len(curve["train"]) == STEPS >= 2 and curve["val"][-1]["step"] == STEPS
    assert [p["loss"] for p in curve["train"]] == losses  # the curve lineage got
    assert all(p["step_time_s"] > 0 and p["lr"] == 0.02 for p in curve["train"])
    assert Path(meta["verl_adapter_path"]) == run / "merged" / "lora_adapter"
    assert (Path(meta["verl_adapter_path"]) / "adapter_model.safetensors").is_file()
    assert meta["verl_checkpoint"] == str(run / "checkpoints" / f"global_step_{STEPS}")
    assert meta["verl_steps"] == STEPS and meta["verl_resumed_from_step"] == 0
    step_times = [p["step_time_s"] for p in curve["train"]]

    # the export: 0.9.1 gets r, alpha and task_type right; only the base model is repaired
    assert lineage["verl_export_repairs"] == [
        f"base_model_name_or_path: None -> {str(tiny.model_dir)!r}"
    ]
    export = json.loads((run / "merged" / "lora_adapter" / "adapter_config.json").read_text())
    assert (export["r"], export["lora_alpha"], export["task_type"]) == (4, 16, "CAUSAL_LM")
    assert export["base_model_name_or_path"] == str(tiny.model_dir)
    info = validate_adapter(final, expected_base=str(tiny.model_dir))
    assert (info.r, info.lora_alpha) == (4, 16) and info.name == out["adapter_name"]
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["adapter_weights_usable"] and checks["adapter_output_differs_from_base"]
    assert any(m.startswith(f"verl[templated] step:{STEPS} - ") for m in messages)

    # PEFT in the core venv: the adapter changes the model, towards what it was trained on
    import pyarrow.parquet as pq
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = pq.read_table(run / "data" / "train.parquet").to_pylist()
    base = AutoModelForCausalLM.from_pretrained(tiny.model_dir, dtype=torch.float32)
    base.eval()
    ids = torch.tensor([rows[0]["input_ids"]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    base_nll = nll_on_outputs(base, rows)
    tuned = PeftModel.from_pretrained(base, str(final))
    tuned.eval()
    with torch.no_grad():
        tuned_logits = tuned(input_ids=ids).logits
    assert float((tuned_logits - base_logits).abs().max()) > 1e-3
    assert nll_on_outputs(tuned, rows) < base_nll
    # served by the real vLLM (CPU build) as served_adapter serves it: its output differs
    served = serve_adapter(
        serve_helpers.server().url, final, probe=first_turn_probe(max_tokens=16), strict=False
    )
    try:
        assert served.adapter_name == out["adapter_name"] and served.differs_from_base
    finally:
        serve_helpers.unload_all(serve_helpers.server())
    print(
        f"verl-cpu: {STEPS} steps, train {lineage['train_time_s']}s, losses {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}, NLL base {base_nll:.3f}, step times {step_times}, "
        f"reported {sorted(k for k in meta if k.startswith('verl_'))}"
    )


def _processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names `path` (verl's launcher and its ranks)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


class _Stop(Exception):
    """Raised from the log callback: `run_command` then kills verl's process group (SIGTERM,
    SIGKILL after 10 s), as it does when Dagster cancels the run."""


def test_a_verl_run_killed_mid_training_resumes_from_its_last_checkpoint(
    verl_python, tiny, tito, tmp_path
):
    from coop_dag.training.recipes import get_recipe

    # 4 rows: 16 steps, a checkpoint every 4 (an epoch's end, where verl's loader state is
    # exhausted: coop_dag.training.verl_pipes resumes with a fresh one)
    recipe = get_recipe("tiny-test", epochs=4, save_steps=4)
    launcher = VerlLauncher(python=str(verl_python), pythonpath=(str(REPO_ROOT),))

    def train(on_log=None):
        return train_lora_verl(
            tiny, tito / "train.parquet", tito / "val.parquet", recipe, tmp_path / "work",
            launcher, device="cpu", on_log=on_log,
        )  # fmt: skip

    def stop_once_saved(_line: str) -> None:  # tqdm's per-step output keeps lines coming
        if list((tmp_path / "work").glob("verl-*/checkpoints/latest_checkpointed_iteration.txt")):
            raise _Stop

    with pytest.raises(_Stop):
        train(stop_once_saved)  # killed mid-training, once its first checkpoint is saved
    (run,) = (tmp_path / "work").glob("verl-*")
    assert _processes_naming(run / "checkpoints") == []  # torchrun and its rank are gone
    tracker = run / "checkpoints" / "latest_checkpointed_iteration.txt"
    saved = int(tracker.read_text())  # the newest complete checkpoint when the group died
    assert 4 <= saved < 16 and saved % 4 == 0
    assert not (run / "checkpoints" / "global_step_16").exists()
    first, _ = metrics_from_file(run / "checkpoints")
    assert min(first) == 1 and max(first) < 16  # the killed attempt's steps

    result = train()  # launched again: verl resumes from that checkpoint (resume_mode=auto)
    assert result.resumed_from_step == saved and result.lineage["resumed_from_step"] == saved
    assert result.steps == 16 and result.lineage["verl_reused_checkpoint"] is False
    log = (run / "verl.log").read_text()
    assert f"Found latest checkpoint: {run / 'checkpoints'}/global_step_{saved}" in log
    # save_steps 4 = one epoch: verl's loader state there is exhausted; the entry replaces it
    assert f"resumed at the end of epoch {saved // 4}: a fresh train loader" in log
    # the curve is whole: the killed attempt's steps up to the checkpoint, the rest resumed
    assert [t["step"] for t in result.train_losses] == list(range(1, 17))
    steps, resumed = metrics_from_file(run / "checkpoints")
    assert resumed == saved and all(steps[s] == first[s] for s in range(1, saved + 1))
    info = validate_adapter(result.adapter_dir, expected_base=str(tiny.model_dir))
    assert (info.r, info.lora_alpha) == (4, 16)
    print(f"verl-cpu resume: killed after the step-{saved} checkpoint, resumed, 16 steps")


PLATFORM_PROBE = """
import torch, torch.distributed as dist
from verl.plugin.platform import get_platform
from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_torch_device
from verl.utils.distributed import initialize_global_process_group

assert (get_device_name(), get_device_id(), get_nccl_backend()) == ("cpu", "cpu", "gloo")
assert type(get_platform()).__module__ == "coop_dag.training.verl_cpu_platform"
assert initialize_global_process_group() == (0, 0, 1)
assert dist.get_backend() == "gloo"
x = torch.ones(2, device=get_device_id())
dist.all_reduce(x)  # a collective over our backend
assert x.tolist() == [1.0, 1.0]
get_torch_device().empty_cache(); get_torch_device().synchronize()
assert get_torch_device().mem_get_info()[1] > 0
dist.destroy_process_group()
print("ok")
"""


def test_cpu_platform_gives_verl_a_cpu_device_and_a_gloo_group(verl_python):
    """`training.verl_cpu_platform` as verl loads it (CPU_ENV): what verl's trainer asks of a
    platform before training -- device, backend, process group, a collective."""
    import socket

    with socket.socket() as sock:  # a free port for the process group's store
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        **CPU_ENV,
        "PYTHONPATH": str(REPO_ROOT),
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip
    proc = subprocess.run(
        [str(verl_python), "-c", PLATFORM_PROBE],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    # without VERL_PLATFORM a CPU host is not silently given our platform (verl's own choice)
    env.pop("VERL_PLATFORM")
    proc = subprocess.run(
        [str(verl_python), "-c", "from verl.utils.device import get_device_name as n; print(n())"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == "cuda", proc.stderr[-2000:]
