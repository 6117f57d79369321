"""The embedded CPU trainer: a LoRA adapter for a student, trained on TITO parquet through
:class:`coop_dag.tito.dataset.TitoSFTDataset` with the transformers ``Trainer``.

What it guarantees (each one a failure the seed report paid for):

- **Same tokenizer, same template.** The parquet's metadata names the tokenizer sha256 and
  chat-template sha256 it was rendered with; a parquet made for another tokenizer (or without
  that metadata) is refused (:class:`TokenizerMismatchError`), as is one rendered with another
  chat template (:class:`ChatTemplateMismatchError`): the ids would be trained, silently, as
  something else. An unknown student is :func:`coop_dag.training.students.get_student`'s error.
- **Loss on outputs only, row weights honoured.** Items come from ``TitoSFTDataset`` (labels
  -100 outside the rows' loss spans). The objective is the weighted token mean over the
  training set, ``sum_rows w * sum_tokens ce / sum_rows w * n_tokens`` -- exactly the token
  mean of a set where each row appears ``w`` times. Each optimizer step estimates it without
  bias: ``sum_{rows in step} w * sum_tokens ce / C`` with the constant
  ``C = rows per step * mean_rows(w * n_tokens)`` (`coop_dag.training.loss.loss_normaliser`).
  A constant, not the step's own weighted token count: with one row per step a per-step
  normalisation would cancel the weight. So a row of weight 0 contributes no gradient and
  leaves the others' alone, weight ``w`` is exactly ``w`` copies of the row in the step, and
  ``w`` scales a one-row step's loss by ``w``. (The logged step loss is therefore
  ``n_tokens / mean n_tokens`` times the row's token mean; the validation loss is the exact
  weighted token mean.) Logits are only computed where a label is (the LM head over a 49k
  vocabulary is ~20 % of a 135M model's FLOPs on a 1k-token prompt). The loss and batches:
  `coop_dag.training.loss`.
- **Data shape from the recipe** (`coop_dag.training.rows.prepare_rows`): ``max_turn`` keeps
  turns ``0..max_turn`` (packed rows are cut after the last kept turn), ``upweight_mode`` trains
  identical upweight copies as copies (``duplicate``) or as one weighted row (``weight``),
  ``packing`` merges or splits a trajectory's consecutive turns (exact: each turn's context is
  its unpacked prompt), ``max_length``/``truncation`` as in TITO. An empty or all-truncated
  training set is refused (:class:`EmptyTrainingSetError`).
- **Resumable.** Every ``save_steps`` steps the adapter, optimizer, scheduler, RNG states and
  trainer state are written to ``<work>/<run_key>/checkpoints/checkpoint-<step>`` atomically
  (staged, then renamed); a rerun of the same run (same student, data and recipe -> same
  ``run_key``) resumes from the newest complete checkpoint and ends on the same final step with
  the same weights as an uninterrupted run (seeded data order, RNG state restored). A finished
  run is not trained again (``force=True`` does).
- **A servable adapter.** ``adapter/``: PEFT's ``adapter_config.json`` (task_type
  ``CAUSAL_LM``, ``lora_alpha`` > 0) + ``adapter_model.safetensors``, checked with
  :func:`coop_dag.training.adapters.validate_adapter`, plus ``lineage.json``
  (:func:`coop_dag.training.adapters.write_lineage`), ``loss_curve.json`` and ``loss_curve.png``.
- **Observable.** ``progress(event)`` receives ``start``, ``step`` (loss, lr, tokens,
  tokens/s), ``eval`` (validation loss: before training, at every epoch end and at the end),
  ``checkpoint`` and ``end`` events (`coop_dag.training.contract.format_event` renders one
  as a log line).

Why the HF ``Trainer`` and not a hand-written loop: it brings checkpoint/resume (optimizer,
scheduler, RNG, data-order skipping), gradient accumulation and LR schedules; the custom parts
are a collator (dynamic padding of ``TitoSFTDataset`` items), ``compute_loss`` (weights,
logits only where trained) and an atomic ``_save_checkpoint``
(`coop_dag.training.hf_trainer`). Its per-step overhead is negligible next to a CPU
forward/backward of a 1k-token row (measured in ``bench/bench_train.py``).

The run contract both trainers share (run key, lineage, `TrainResult`, loss curve) is
`coop_dag.training.contract`. No Dagster here: ``assets/training.py`` wraps :func:`train_lora`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterInfo,
    adapter_sha12,
    validate_adapter,
    write_lineage,
)
from coop_dag.training.contract import (
    BACKEND,
    RESULT_FILE,
    TRAINER_VERSION,
    ProgressFn,
    TrainResult,
    curves_from_history,
    make_readable,
    run_key_for,
    run_lineage,
    write_loss_curve,
)
from coop_dag.training.errors import TrainError
from coop_dag.training.hf_trainer import (
    CHECKPOINT_PREFIX,
    clean_staging,
    complete_checkpoints,
    library_versions,
    lora_config,
    make_progress_callback,
    make_trainer_class,
    restore_counters,
    tito_datasets,
    torch_threads,
    training_arguments,
)
from coop_dag.training.loss import TitoCollator, loss_normaliser, supports_logits_mask
from coop_dag.training.recipes import Recipe, get_recipe
from coop_dag.training.rows import TrainingData, load_training_data
from coop_dag.util.files import atomic_write_json


@dataclass
class _Fitted:
    """What training left behind: the adapter staged in the run dir and the run's numbers."""

    stage: Path
    history: list[dict]
    train_time: float
    tokens_seen: int
    trained_tokens: int
    steps: int
    epoch: float
    max_steps: int
    trainable: int
    total: int
    n_threads: int
    train_rows: int
    val_rows: int
    resumed_step: int | None


def default_work_dir() -> Path:
    """``$COOP_DAG_TRAIN_DIR`` or ``<repo>/runs/train``."""
    from coop_dag import REPO_ROOT

    env = os.environ.get("COOP_DAG_TRAIN_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "runs" / "train"


def train_lora(
    student: Any,
    train_path: str | os.PathLike,
    val_path: str | os.PathLike | None = None,
    recipe: Recipe | str = "embedded-default",
    work_dir: str | os.PathLike | None = None,
    *,
    progress: ProgressFn | None = None,
    data_version: str | None = None,
    facts: dict[str, Any] | None = None,
    force: bool = False,
    model: Any = None,
    check_chat_template: bool = True,
) -> TrainResult:
    """Train a LoRA adapter for ``student`` (a `training.students.Student` or a name)
    on the TITO parquet ``train_path`` (validation loss on ``val_path`` when given).

    The run lives in ``<work_dir>/<run_key>/`` (``checkpoints/``, ``data/`` with the prepared
    rows, ``adapter/`` when done, ``train_result.json``). Rerunning resumes from the newest
    complete checkpoint; a finished run returns its result without training (``force``:
    train again from scratch). ``facts`` are added to ``lineage.json``. ``model``: an already
    loaded base model to train on (it is modified: LoRA layers are injected).

    ``progress`` gets every event (see `coop_dag.training.contract.format_event`); an
    exception it raises aborts the run where it is (the last complete checkpoint stays, and a
    rerun resumes from it). Raises :class:`TokenizerMismatchError` /
    :class:`ChatTemplateMismatchError` before any work, :class:`EmptyTrainingSetError` when no
    row is left to train on.
    """
    started = time.monotonic()
    if isinstance(student, str):
        from coop_dag.training.students import get_student

        student = get_student(student)
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    val = Path(val_path) if val_path else None
    data = load_training_data(student, recipe, Path(train_path), val, check_chat_template)
    key = run_key_for(student, recipe, data.train_sha, data.val_sha)
    run_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    run_dir = run_dir / key
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    finished = _finished_run(run_dir, started)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_staging(run_dir / "checkpoints")
    clean_staging(run_dir)

    fitted = _fit(student, recipe, data, run_dir, key, model=model, progress=progress)
    _fix_adapter_config(fitted.stage, recipe, student)
    info = validate_adapter(fitted.stage, expected_base=str(student.model_dir))
    curves = curves_from_history(fitted.history)
    losses = _losses(*curves)
    version = data_version or data.train_sha[:16]
    lineage = _lineage(student, recipe, data, fitted, info, key, losses, facts, version)
    write_lineage(fitted.stage, lineage)
    title = f"{student.name} / {recipe.name} / {info.name}"
    json_path, png_path = write_loss_curve(fitted.stage, *curves, title)
    adapter_dir = _install_adapter(fitted.stage, run_dir / "adapter")
    result = TrainResult(
        adapter_dir=adapter_dir,
        run_dir=run_dir,
        run_key=key,
        **_result_numbers(fitted, losses, curves, started),
        prep={"train": data.prep.as_dict(), "val": data.val_prep.as_dict()},
        recipe=recipe.to_json(),
        lineage=lineage,
        loss_curve_json=adapter_dir / json_path.name,
        loss_curve_png=adapter_dir / png_path.name if png_path else None,
        adapter_sha12=adapter_sha12(adapter_dir),
    )
    atomic_write_json(run_dir / RESULT_FILE, result.as_dict(), sort_keys=True, default=str)
    if progress is not None:
        progress(_end_event(result))
    return result


def _finished_run(run_dir: Path, started: float) -> TrainResult | None:
    """The recorded result of a run that already finished (``reused``), else None."""
    result_file = run_dir / RESULT_FILE
    if not (result_file.is_file() and (run_dir / "adapter").is_dir()):
        return None
    done = json.loads(result_file.read_text())
    done.update(reused=True, wall_time_s=round(time.monotonic() - started, 2))
    return TrainResult.from_record(done)


def _end_event(result: TrainResult) -> dict[str, Any]:
    """The ``end`` progress event of a finished training call."""
    return {
        "event": "end",
        "steps": result.steps,
        "train_loss": result.train_loss,
        "initial_val_loss": result.initial_val_loss,
        "final_val_loss": result.final_val_loss,
        "wall_time_s": result.wall_time_s,
        "adapter_dir": str(result.adapter_dir),
    }


def _fit(
    student: Any,
    recipe: Recipe,
    data: TrainingData,
    run_dir: Path,
    key: str,
    *,
    model: Any,
    progress: ProgressFn | None,
) -> _Fitted:
    """Train (resuming from the newest complete checkpoint) and stage the adapter in
    ``run_dir``; all of it under the recipe's torch thread count."""
    from peft import get_peft_model
    from transformers import set_seed

    train_ds, val_ds, collator = tito_datasets(student, recipe, data, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    resume = complete_checkpoints(ckpt_dir)
    resume_from = resume[-1] if resume else None
    resumed_step = int(resume_from.name[len(CHECKPOINT_PREFIX) :]) if resume_from else None
    val_rows = len(val_ds) if val_ds is not None else 0

    with torch_threads(recipe.torch_threads) as n_threads:
        set_seed(recipe.seed)
        base = model if model is not None else student.load_model()
        base.config.use_cache = False
        net = get_peft_model(base, lora_config(recipe))
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        slice_logits = supports_logits_mask(net)
        steps_per_epoch = math.ceil(len(train_ds) / (recipe.batch_size * recipe.grad_accum))
        max_steps = (
            recipe.max_steps
            if recipe.max_steps > 0
            else max(1, math.ceil(steps_per_epoch * recipe.epochs))
        )
        trainer, callback = _trainer(
            net, recipe, ckpt_dir, max_steps, (train_ds, val_ds, collator), slice_logits, progress
        )
        if resume_from is not None:
            restore_counters(trainer, resume_from)
        if progress is not None:
            progress(
                {
                    "event": "start",
                    "student": student.name,
                    "recipe": recipe.name,
                    "run_key": key,
                    "run_dir": str(run_dir),
                    "train_rows": len(train_ds),
                    "val_rows": val_rows,
                    "max_steps": max_steps,
                    "trainable_params": trainable,
                    "resumed_from_step": resumed_step,
                    "torch_threads": n_threads,
                }
            )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        # the last epoch-end evaluation ran at the final step; make sure of it
        callback._val(trainer.state, net)
        fitted = _Fitted(
            stage=Path(),  # set below, once the adapter is saved
            history=list(trainer.state.log_history),
            train_time=trainer.elapsed(),
            tokens_seen=trainer.tokens_seen,
            trained_tokens=trainer.trained_tokens,
            steps=int(trainer.state.global_step),
            epoch=float(trainer.state.epoch or 0.0),
            max_steps=max_steps,
            trainable=trainable,
            total=total,
            n_threads=n_threads,
            train_rows=len(train_ds),
            val_rows=val_rows,
            resumed_step=resumed_step,
        )
        # the adapter, staged then renamed into place (by _install_adapter)
        fitted.stage = Path(tempfile.mkdtemp(prefix=".stage-adapter-", dir=run_dir))
        net.save_pretrained(str(fitted.stage), safe_serialization=True)
    return fitted


def _trainer(
    net: Any,
    recipe: Recipe,
    ckpt_dir: Path,
    max_steps: int,
    datasets: tuple[Any, Any, TitoCollator],
    slice_logits: bool,
    progress: ProgressFn | None,
) -> tuple[Any, Any]:
    """``(trainer, progress callback)`` for ``net``: HF's own printing removed (we report
    through ``progress``), checkpoints reported as ``checkpoint`` events."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    train_ds, val_ds, collator = datasets
    args = training_arguments(recipe, ckpt_dir, max_steps)
    normaliser = loss_normaliser(train_ds, recipe.batch_size * recipe.grad_accum)
    cls = make_trainer_class()
    callback = make_progress_callback(progress, val_ds, collator, slice_logits)
    trainer = cls(
        model=net,
        args=args,
        data_collator=collator,
        train_dataset=train_ds,
        callbacks=[callback],
        slice_logits=slice_logits,
        normaliser=normaliser,
    )
    callback.trainer = trainer
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    trainer.on_checkpoint = lambda step, path: (
        progress and progress({"event": "checkpoint", "step": step, "path": str(path)})
    )
    return trainer, callback


def _losses(
    train_curve: list[dict], val_curve: list[dict]
) -> tuple[float | None, float | None, float | None]:
    """``(train loss: mean of the last five logged steps, validation loss before training,
    final validation loss)``."""
    initial_val = val_curve[0]["val_loss"] if val_curve and val_curve[0]["step"] == 0 else None
    final_val = val_curve[-1]["val_loss"] if val_curve else None
    last = [t["loss"] for t in train_curve[-max(1, min(5, len(train_curve))) :]]
    train_loss = float(sum(last) / len(last)) if last else None
    return train_loss, initial_val, final_val


def _lineage(
    student: Any,
    recipe: Recipe,
    data: TrainingData,
    fitted: _Fitted,
    info: AdapterInfo,
    key: str,
    losses: tuple[float | None, float | None, float | None],
    facts: dict[str, Any] | None,
    data_version: str,
) -> dict[str, Any]:
    """``lineage.json``: the shared facts (`run_lineage`) plus this trainer's run numbers."""
    train_loss, initial_val, final_val = losses
    return {
        **run_lineage(
            student,
            recipe,
            facts,
            data.meta,
            data_version,
            (data.train_path, data.train_sha),
            (data.val_path, data.val_sha),
            trainer=BACKEND,
            trainer_version=TRAINER_VERSION,
        ),  # fmt: skip
        "seed": recipe.seed,
        "run_key": key,
        "steps": fitted.steps,
        "max_steps": fitted.max_steps,
        "epochs": round(fitted.epoch, 4),
        "train_rows": fitted.train_rows,
        "val_rows": fitted.val_rows,
        "prep": data.prep.as_dict(),
        "tokens_seen": fitted.tokens_seen,
        "trained_tokens": fitted.trained_tokens,
        "train_loss": train_loss,
        "initial_val_loss": initial_val,
        "final_val_loss": final_val,
        "trainable_params": fitted.trainable,
        "total_params": fitted.total,
        "lora_r": info.r,
        "lora_alpha": info.lora_alpha,
        "train_time_s": round(fitted.train_time, 2),
        "torch_threads": fitted.n_threads,
        "resumed_from_step": fitted.resumed_step,
        "versions": library_versions(),
    }


def _result_numbers(
    fitted: _Fitted,
    losses: tuple[float | None, float | None, float | None],
    curves: tuple[list[dict], list[dict]],
    started: float,
) -> dict[str, Any]:
    """`TrainResult`'s step, loss, token and time fields of a finished training call."""
    train_loss, initial_val, final_val = losses
    train_time = fitted.train_time
    return {
        "steps": fitted.steps,
        "max_steps": fitted.max_steps,
        "epochs": round(fitted.epoch, 4),
        "train_loss": train_loss,
        "initial_val_loss": initial_val,
        "final_val_loss": final_val,
        "val_losses": curves[1],
        "train_losses": curves[0],
        "tokens_seen": fitted.tokens_seen,
        "trained_tokens": fitted.trained_tokens,
        "wall_time_s": round(time.monotonic() - started, 2),
        "train_time_s": round(train_time, 2),
        "tokens_per_s": round(fitted.tokens_seen / train_time, 2) if train_time > 0 else 0.0,
        "trainable_params": fitted.trainable,
        "total_params": fitted.total,
        "resumed_from_step": fitted.resumed_step,
        "reused": False,
        "train_rows": fitted.train_rows,
        "val_rows": fitted.val_rows,
    }


def _install_adapter(stage: Path, adapter_dir: Path) -> Path:
    """Rename the staged adapter to ``adapter_dir`` (replacing an older one), readable by a
    serving engine running as another user."""
    make_readable(stage)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(stage, adapter_dir)
    return adapter_dir


def _fix_adapter_config(adapter: Path, recipe: Recipe, student: Any) -> None:
    """PEFT writes what vLLM needs; make the facts the validator checks explicit."""
    cfg_path = adapter / ADAPTER_CONFIG
    cfg = json.loads(cfg_path.read_text())
    changed = False
    if cfg.get("task_type") != "CAUSAL_LM":
        cfg["task_type"], changed = "CAUSAL_LM", True
    if not cfg.get("lora_alpha"):
        cfg["lora_alpha"], changed = recipe.lora_alpha, True
    if cfg.get("base_model_name_or_path") != str(student.model_dir):
        cfg["base_model_name_or_path"], changed = str(student.model_dir), True
    if changed:
        atomic_write_json(cfg_path, cfg, sort_keys=True, default=str)
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise TrainError(f"{adapter}: PEFT wrote no {ADAPTER_WEIGHTS}")


__all__ = [
    "default_work_dir",
    "train_lora",
]
