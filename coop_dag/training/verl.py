"""``lora_checkpoint`` trained by verl's engine SFT trainer: `train_lora_verl`.

`train_lora_verl` is the ``lora_checkpoint`` asset's verl trainer: the same contract and result
as the embedded `training.train.train_lora` (rows prepared for the training recipe and the
recipe mapped onto verl's config by `coop_dag.training.verl_recipe`, the same ``lineage.json``
facts), with a finished verl checkpoint never trained again
(`coop_dag.training.verl_run.finished_checkpoint`).

verl runs in its own environment and is never imported here. The pieces, one module each:
`coop_dag.training.verl_config` (`VerlSFTConfig`: the validated config and its Hydra
overrides; the CPU setup), `coop_dag.training.verl_launch` (`VerlLauncher`: verl's python or
container image; the torchrun and export commands; running them), `coop_dag.training.verl_run`
(a run's record and checkpoints; `run_verl`: train or reuse, export, repair, validate), and,
inside verl's environment, `coop_dag.training.verl_pipes` (the torchrun entry) and
`coop_dag.training.verl_cpu_platform` (verl's CPU platform). On a machine without GPUs,
``device="cpu"`` runs the same trainer, dataset and export on the CPU: the venv from
``scripts/verl_venv.sh``, trainer ``verl-cpu`` in `coop_dag.config.profiles`.

A `train_lora_verl` run lives in ``<work_dir>/verl-<run_key>/``:

- ``data/{train,val}.parquet``: the TITO rows prepared for the recipe exactly as the
  embedded trainer prepares them (`coop_dag.training.rows.prepare_rows`: max_turn, packing,
  truncation), except that upweight is always trained as copies -- verl's SFT loss has
  no per-row weight, so a weighted row would silently count once (a non-integer weight
  is refused). The parquet's tokenizer and chat template are checked first.
- ``verl_config.yaml`` (`VerlSFTConfig.to_yaml`, from `config_for_recipe`) and
  ``verl_command.txt``: what verl is sent.
- ``checkpoints/``: verl's ``trainer.default_local_dir`` (``global_step_N`` every
  ``save_steps``; a relaunch resumes from the newest, `run_verl` reuses a finished one)
  with ``coop_dag_verl_metrics.jsonl``, the metrics rank 0 took from verl's step loop (the
  loss curve; `coop_dag.training.verl_pipes`), ``merged/``: the model merger's export,
  ``verl.log``: every line verl printed (each also goes to `on_log`).
- ``adapter/``: the repaired, validated PEFT export plus ``lineage.json`` and
  ``loss_curve.{json,png}``; ``train_result.json`` once all is done -- a rerun then
  returns it (``reused``) without starting verl.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.training.verl_config import VerlSFTConfig
from coop_dag.training.verl_launch import (
    LaunchSession,
    LogFn,
    VerlLauncher,
    check_launcher,
    train_command,
)
from coop_dag.training.verl_recipe import (
    BACKEND,
    BRIDGE_VERSION,
    NOT_APPLIED,
    PreparedData,
    config_for_recipe,
    prepare_data,
    write_data,
)
from coop_dag.training.verl_run import VerlResult, read_json, run_verl
from coop_dag.util.files import atomic_write_json, file_sha256

__all__ = [
    "metrics_from_file",
    "run_key",
    "train_lora_verl",
]

RESULT_FILE = "train_result.json"
LOG_FILE = "verl.log"  # every line verl printed, all attempts (a record; nothing parses it)
CONFIG_RECORD = "verl_config.yaml"
COMMAND_RECORD = "verl_command.txt"


def run_key(
    student: Any,
    recipe: Any,
    train_sha: str,
    val_sha: str | None,
    nproc: int,
    device: str = "cuda",
) -> str:
    """What identifies a verl run (its directory): student, recipe, data, GPU count, and the
    device when it is the CPU (a GPU run keeps the key it always had)."""
    from coop_dag.training.contract import run_key_for

    engine: dict[str, Any] = {"backend": BACKEND, "bridge_version": BRIDGE_VERSION}
    if device != "cuda":
        engine["device"] = device
    return run_key_for(student, recipe, train_sha, val_sha, nproc=nproc, **engine)


def metrics_from_file(
    output_dir: str | os.PathLike,
) -> tuple[dict[int, dict[str, float]], int]:
    """Per-step metrics of the run in `output_dir`, as rank 0 recorded them from verl's step
    loop (`verl_pipes.METRICS_FILE`; a later attempt's record for a step replaces an
    earlier one's), and the step the last attempt resumed from (0: none)."""
    from coop_dag.training.verl_pipes import read_metrics

    return read_metrics(output_dir)


def _lora_params(adapter_dir: Path) -> int:
    from safetensors import safe_open

    from coop_dag.training.adapters import ADAPTER_WEIGHTS

    total = 0
    with safe_open(os.fspath(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():
            if ".lora_" in key:
                total += math.prod(f.get_slice(key).get_shape())
    return total


def train_lora_verl(
    student: Any,
    train_path: str | os.PathLike,
    val_path: str | os.PathLike | None,
    recipe: Any,
    work_dir: str | os.PathLike,
    launcher: VerlLauncher,
    *,
    nproc: int = 1,
    on_log: LogFn | None = None,
    data_version: str | None = None,
    facts: Mapping[str, Any] | None = None,
    force: bool = False,
    experiment_name: str = "sft",
    timeout: float | None = None,
    merge_timeout: float | None = 3600.0,
    device: str = "cuda",
    session: LaunchSession | None = None,
) -> Any:
    """`training.train.train_lora`'s contract, trained by verl (``device="cpu"``: verl on this
    machine's CPU, `CPU_OVERRIDES`/`CPU_ENV`; the same trainer, dataset and export): a LoRA
    adapter for `student` on the TITO parquet `train_path` (validation on `val_path`),
    returned as the same `coop_dag.training.contract.TrainResult` with the same `lineage.json` facts
    (``trainer: "verl"``).

    The run lives in ``<work_dir>/verl-<run_key>/`` (the module docstring lists its files);
    `session`: each verl launch runs inside it (``lora_checkpoint``'s Dagster Pipes session:
    rank 0 reports the steps, the loss curve and the exported adapter to Dagster). A finished
    run is returned (``reused``) without starting verl; ``force``: start the run over.
    """
    import time

    from coop_dag.training.recipes import get_recipe

    started = time.monotonic()
    if isinstance(student, str):
        from coop_dag.training.students import get_student

        student = get_student(student)
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    log = on_log or (lambda _line: None)
    train_path = Path(train_path)
    val_path = Path(val_path) if val_path else None
    data = prepare_data(student, train_path, val_path, recipe, log)

    train_sha = file_sha256(train_path)
    val_sha = file_sha256(val_path) if val_path is not None and val_path.is_file() else None
    key = run_key(student, recipe, train_sha, val_sha, nproc, device)
    run_dir = Path(work_dir) / f"verl-{key}"
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    finished = _finished_result(run_dir, key, log, started)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    train_file, val_file = write_data(run_dir, data, train_path, val_path)

    cfg = config_for_recipe(
        recipe,
        train_files=train_file,
        val_files=val_file,
        train_rows=len(data.train_rows),
        val_rows=len(data.val_rows),
        model_path=str(student.model_dir),
        output_dir=run_dir / "checkpoints",
        experiment_name=experiment_name,
        nproc_per_node=nproc,
        device=device,
    )
    check_launcher(launcher)
    run = _VerlRun(
        student, recipe, key, run_dir, cfg, data, launcher,
        train_command(cfg, launcher, export_to=run_dir / "merged"),  # what run_verl runs
        nproc, device, (train_path, train_sha), (val_path, val_sha),
    )  # fmt: skip
    verl = _launch(run, log, timeout=timeout, merge_timeout=merge_timeout, session=session)
    curves = _curves(cfg, verl.checkpoint_dir)
    lineage = _lineage(run, verl, curves, facts, data_version or train_sha[:16])
    loss_files = _publish_adapter(run, verl, curves, lineage)
    result = _train_result(run, verl, curves, lineage, loss_files, time.monotonic() - started)
    atomic_write_json(run_dir / RESULT_FILE, result.as_dict(), sort_keys=True, default=str)
    return result


# --------------------------------------------------------------------------- its steps


def _finished_result(run_dir: Path, key: str, log: LogFn, started: float) -> Any | None:
    """The run's `TrainResult` when it already finished (``train_result.json`` and the
    published adapter), marked ``reused``; None when it did not."""
    import time

    from coop_dag.training.adapters import ADAPTER_WEIGHTS
    from coop_dag.training.contract import TrainResult

    done = read_json(run_dir / RESULT_FILE)
    if not (isinstance(done, dict) and (run_dir / "adapter" / ADAPTER_WEIGHTS).is_file()):
        return None
    log(f"[coop-dag] verl run {key} already finished: {run_dir / 'adapter'}")
    done.update(reused=True, wall_time_s=round(time.monotonic() - started, 2))
    return TrainResult.from_record(done)


@dataclass(frozen=True)
class _VerlRun:
    """One `train_lora_verl` run, as set up before verl is launched."""

    student: Any
    recipe: Any
    key: str
    run_dir: Path
    cfg: VerlSFTConfig
    data: PreparedData
    launcher: VerlLauncher
    command: Any  # coop_dag.util.containers.Command: the train command run_verl runs
    nproc: int
    device: str
    train: tuple[Path, str]  # the source parquet, its sha256
    val: tuple[Path | None, str | None]


def _launch(
    run: _VerlRun,
    log: LogFn,
    *,
    timeout: float | None,
    merge_timeout: float | None,
    session: LaunchSession | None,
) -> VerlResult:
    """Record what verl is sent (``verl_config.yaml``, ``verl_command.txt``) and `run_verl`,
    every line verl prints appended to ``verl.log`` as well as given to `log`."""
    cfg, run_dir = run.cfg, run.run_dir
    (run_dir / CONFIG_RECORD).write_text(cfg.to_yaml())
    (run_dir / COMMAND_RECORD).write_text(run.command.shell() + "\n")
    log(
        f"[coop-dag] verl run {run_dir}: {len(run.data.train_rows)} rows "
        f"({len(run.data.val_rows)} val), {cfg.expected_total_steps()} steps, recipe "
        f"{run.recipe.name}, {run.launcher.describe()}"
    )
    with (run_dir / LOG_FILE).open("a", encoding="utf-8") as log_file:

        def tee(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            log(line)

        verl = run_verl(
            cfg, run.launcher, on_log=tee, merged_dir=run_dir / "merged", timeout=timeout,
            merge_timeout=merge_timeout, session=session,
        )  # fmt: skip
    assert verl.adapter_dir is not None and verl.adapter is not None
    return verl


@dataclass(frozen=True)
class _Curves:
    """The loss curves of a finished verl run, from rank 0's record of verl's step loop."""

    steps: int  # of the final checkpoint
    epochs: float
    train: list[dict]  # [{"step", "epoch", "loss", "learning_rate", "tokens_seen", ...}]
    val: list[dict]  # [{"step", "epoch", "val_loss"}]
    tokens: int
    resumed_from: int  # the step the last attempt resumed from (0: none)

    @property
    def train_loss(self) -> float | None:
        """The mean of the last 5 steps' losses, as the embedded trainer reports it."""
        last = [t["loss"] for t in self.train[-5:]]
        return float(sum(last) / len(last)) if last else None

    @property
    def final_val_loss(self) -> float | None:
        return self.val[-1]["val_loss"] if self.val else None


def _curves(cfg: VerlSFTConfig, checkpoint_dir: Path) -> _Curves:
    """The curves of the steps up to `checkpoint_dir` (``global_step_N``)."""
    from coop_dag.training.verl_pipes import STEP_TIME_KEY

    steps = int(checkpoint_dir.name.removeprefix("global_step_"))
    per_epoch = cfg.steps_per_epoch()
    recorded, resumed_from = metrics_from_file(cfg.output_dir)
    metrics = {s: m for s, m in recorded.items() if s <= steps}
    tokens, train_curve, val_curve = 0, [], []
    for step in sorted(metrics):
        m = metrics[step]
        epoch = round(step / per_epoch, 4) if per_epoch else None
        tokens += int(m.get("train/global_tokens", 0))
        if "train/loss" in m:
            train_curve.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": m["train/loss"],
                    "learning_rate": m.get("train/lr"),
                    "tokens_seen": tokens,
                    "step_time_s": m.get(STEP_TIME_KEY),  # verl's train_batch call
                }
            )
        if "val/loss" in m:
            val_curve.append({"step": step, "epoch": epoch, "val_loss": m["val/loss"]})
    epochs = round(steps / per_epoch, 4) if per_epoch else float(cfg.total_epochs)
    return _Curves(steps, epochs, train_curve, val_curve, tokens, resumed_from)


def _lineage(
    run: _VerlRun,
    verl: VerlResult,
    curves: _Curves,
    facts: Mapping[str, Any] | None,
    data_version: str,
) -> dict[str, Any]:
    """``lineage.json``'s facts: the embedded trainer's (`run_lineage`, the same keys) and
    verl's (config, command, checkpoint, export). A flat record: long, not complex."""
    from coop_dag.training.contract import run_lineage

    cfg, recipe, data = run.cfg, run.recipe, run.data
    rows_trained = curves.steps * cfg.train_batch_size
    trained_tokens = round(data.prep.trained_tokens * rows_trained / max(1, len(data.train_rows)))
    return {
        **run_lineage(
            run.student,
            recipe,
            facts,
            data.meta,
            data_version,
            run.train,
            run.val,
            trainer=BACKEND,
            trainer_version=BRIDGE_VERSION,
        ),  # fmt: skip
        "recipe_not_applied": {
            k: why for k, why in NOT_APPLIED.items() if k == "seed" or recipe.to_json().get(k)
        },
        "seed": recipe.seed,
        "run_key": run.key,
        "steps": curves.steps,
        "max_steps": cfg.expected_total_steps() or curves.steps,
        "epochs": curves.epochs,
        "train_rows": len(data.train_rows),
        "val_rows": len(data.val_rows),
        "prep": data.prep.as_dict(),
        "tokens_seen": curves.tokens,
        "trained_tokens": trained_tokens,
        "trained_tokens_estimated": True,  # from the prepared rows and the steps verl ran
        "train_loss": curves.train_loss,
        "initial_val_loss": None,  # verl validates after steps only
        "final_val_loss": curves.final_val_loss,
        "trainable_params": _lora_params(verl.adapter_dir),
        "total_params": None,
        "lora_r": verl.adapter.r,
        "lora_alpha": verl.adapter.lora_alpha,
        "train_time_s": verl.train_time_s or 0.0,
        "resumed_from_step": curves.resumed_from or None,
        "versions": {"verl": run.launcher.describe()},
        "verl_nproc": run.nproc,
        "verl_device": run.device,
        "verl_config": cfg.as_dict(),
        "verl_command": run.command.shell(),
        "verl_checkpoint": str(verl.checkpoint_dir),
        "verl_export": str(verl.adapter_dir),
        "verl_export_repairs": list(verl.repairs),
        "verl_reused_checkpoint": verl.reused_checkpoint,
    }


def _publish_adapter(
    run: _VerlRun, verl: VerlResult, curves: _Curves, lineage: Mapping[str, Any]
) -> tuple[Path, Path | None]:
    """``adapter/``: verl's repaired export + ``lineage.json`` + the loss curve, staged then
    renamed into place. Returns the loss curve's json and png (None: not drawn) names."""
    from coop_dag.training.adapters import write_lineage
    from coop_dag.training.contract import copy_adapter, write_loss_curve

    stage = run.run_dir / ".stage-adapter"
    shutil.rmtree(stage, ignore_errors=True)
    copy_adapter(verl.adapter_dir, stage)
    write_lineage(stage, lineage)
    title = f"{run.student.name} / {run.recipe.name} / verl / {verl.adapter.name}"
    json_path, png_path = write_loss_curve(stage, curves.train, curves.val, title)
    for item in stage.iterdir():
        os.chmod(item, 0o644)
    adapter_dir = run.run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(stage, adapter_dir)
    return json_path, png_path


def _train_result(
    run: _VerlRun,
    verl: VerlResult,
    curves: _Curves,
    lineage: dict[str, Any],
    loss_files: tuple[Path, Path | None],
    wall_time: float,
) -> Any:
    """The `TrainResult` the embedded trainer would return for this run (its lineage's facts)."""
    from coop_dag.training.contract import TrainResult

    adapter_dir = run.run_dir / "adapter"
    json_path, png_path = loss_files
    train_time = lineage["train_time_s"]
    return TrainResult(
        adapter_dir=adapter_dir,
        run_dir=run.run_dir,
        run_key=run.key,
        steps=curves.steps,
        max_steps=lineage["max_steps"],
        epochs=curves.epochs,
        train_loss=lineage["train_loss"],
        initial_val_loss=None,
        final_val_loss=lineage["final_val_loss"],
        val_losses=curves.val,
        train_losses=curves.train,
        tokens_seen=curves.tokens,
        trained_tokens=lineage["trained_tokens"],
        wall_time_s=round(wall_time, 2),
        train_time_s=train_time,
        tokens_per_s=round(curves.tokens / train_time, 2) if train_time > 0 else 0.0,
        trainable_params=lineage["trainable_params"],
        total_params=None,
        resumed_from_step=curves.resumed_from or None,
        reused=False,
        train_rows=len(run.data.train_rows),
        val_rows=len(run.data.val_rows),
        prep={"train": run.data.prep.as_dict(), "val": run.data.val_prep.as_dict()},
        recipe=run.recipe.to_json(),
        lineage=lineage,
        loss_curve_json=adapter_dir / json_path.name,
        loss_curve_png=adapter_dir / png_path.name if png_path else None,
        adapter_sha12=verl.adapter.sha12,
        extra={
            "trainer": BACKEND,
            "verl_checkpoint": str(verl.checkpoint_dir),
            "verl_reused_checkpoint": verl.reused_checkpoint,
            "verl_export_repairs": list(verl.repairs),
        },
    )
