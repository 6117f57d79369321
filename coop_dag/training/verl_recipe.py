"""What a training recipe becomes for verl: its config (`config_for_recipe`) and its rows
(`prepare_data`, `write_data`); what verl cannot honour (`NOT_APPLIED`).

The recipe's meaning is kept (`coop_dag.training.recipes.Recipe`, ``configs/recipes.yaml``):
the rows are prepared exactly as the embedded trainer prepares them
(`coop_dag.training.rows.prepare_rows`), except that upweight is always trained as copies;
an optimizer step is ``batch_size x grad_accum`` rows; a step count or a fractional epoch
count becomes ``trainer.total_training_steps`` with enough epochs for verl's loop to reach
it. `BRIDGE_VERSION` is part of every verl run key (`coop_dag.training.verl.run_key`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.training.verl_config import (
    VerlError,
    VerlSFTConfig,
    count_parquet_rows,
    file_paths,
)
from coop_dag.training.verl_launch import LogFn

__all__ = [
    "BACKEND",
    "BRIDGE_VERSION",
    "NOT_APPLIED",
    "SCHEDULERS",
    "PreparedData",
    "config_for_recipe",
    "prepare_data",
    "write_data",
]

BACKEND = "verl"  # the `trainer` recorded in lineage (the embedded one: train.BACKEND)
BRIDGE_VERSION = "2"  # bump when what train_lora_verl sends to verl changes: a new run dir
# recipe lr_scheduler -> verl optim.lr_scheduler_type (verl's constant has a warmup too)
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine"}
# recipe keys verl has no counterpart for (recorded in lineage as not applied)
NOT_APPLIED = {
    "lora_dropout": "verl's model config has no LoRA dropout",
    "bf16": "verl trains in its engine's dtype (engine.dtype, bfloat16 by default)",
    "torch_threads": "CPU trainer only",
    # 0.9.1: trainer.seed is read by nothing in sft_trainer; engine.seed only under
    # engine.full_determinism
    "seed": "verl's sft_trainer does not seed LoRA init or data order from its config",
}


def config_for_recipe(
    recipe: Any,
    *,
    train_files: str | os.PathLike | Iterable[str | os.PathLike],
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    val_files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    train_rows: int | None = None,
    val_rows: int | None = None,
    project_name: str = "coop-dag",
    experiment_name: str = "sft",
    nproc_per_node: int = 1,
    device: str = "cuda",
    resume_mode: str = "auto",
) -> VerlSFTConfig:
    """The verl config for a `coop_dag.training.recipes.Recipe` (``configs/recipes.yaml``), with the
    recipe's meaning kept: an optimizer step is ``batch_size x grad_accum`` rows (verl's
    global ``data.train_batch_size``; ``batch_size`` rows per micro batch, capped at what
    one GPU gets); ``max_steps`` (or a fractional ``epochs``) becomes
    ``trainer.total_training_steps`` with enough epochs for verl's loop to reach it;
    ``learning_rate``, ``lr_scheduler`` (constant | constant_with_warmup | cosine; verl has no
    linear), ``warmup_steps``, ``weight_decay`` (verl's default is 0.01), ``max_grad_norm``,
    ``lora_r``/``lora_alpha``/``target_modules``, ``max_length`` and ``truncation``;
    ``save_steps`` becomes ``trainer.save_freq`` and, with `resume_mode` ``auto`` (the run dir
    is the run's own: `run_key`), a relaunch resumes from the newest of those checkpoints.
    `NOT_APPLIED` lists what verl cannot honour."""
    scheduler = SCHEDULERS.get(recipe.lr_scheduler)
    if scheduler is None:
        raise VerlError(
            f"recipe '{recipe.name}': lr_scheduler {recipe.lr_scheduler!r} has no verl "
            f"counterpart (verl's optim.lr_scheduler_type: constant | cosine)"
        )
    train = file_paths(train_files)
    if train_rows is None and train and all(Path(f).is_file() for f in train):
        train_rows = count_parquet_rows(train)
    micro, epochs, total = _recipe_steps(recipe, train_rows, nproc_per_node)
    targets = recipe.target_modules
    mapping: dict[str, Any] = {
        "lora_rank": recipe.lora_r,
        "lora_alpha": recipe.lora_alpha,
        "target_modules": list(targets) if isinstance(targets, tuple) else targets,
        "lr": recipe.learning_rate,
        "total_epochs": epochs,
        "train_batch_size": recipe.batch_size * recipe.grad_accum,
        "micro_batch_size_per_gpu": micro,
        "max_length": recipe.max_length,
        "truncation": recipe.truncation,
        "total_training_steps": total,
        "save_freq": recipe.save_steps if recipe.save_steps > 0 else None,
        "resume_mode": resume_mode,
        "verl": {
            "optim.lr_scheduler_type": scheduler,
            "optim.lr_warmup_steps": (
                0 if recipe.lr_scheduler == "constant" else int(recipe.warmup_steps)
            ),
            "optim.weight_decay": float(recipe.weight_decay),
            "optim.clip_grad": float(recipe.max_grad_norm),
        },
    }
    return VerlSFTConfig.from_recipe(
        mapping,
        train_files=train,
        val_files=val_files,
        model_path=model_path,
        output_dir=output_dir,
        train_rows=train_rows,
        val_rows=val_rows,
        project_name=project_name,
        experiment_name=experiment_name,
        nproc_per_node=nproc_per_node,
        device=device,
    )


def _recipe_steps(recipe: Any, train_rows: int | None, nproc: int) -> tuple[int, int, int | None]:
    """``(micro_batch_size_per_gpu, total_epochs, total_training_steps)`` for `recipe` on
    `train_rows` rows (None: unknown) and `nproc` GPUs: an optimizer step is ``batch_size x
    grad_accum`` rows, ``batch_size`` per micro batch capped at what one GPU gets;
    ``max_steps`` (or a fractional ``epochs``) becomes a step count (None: verl's own), with
    enough epochs for verl's loop to reach it."""
    rows_per_step = recipe.batch_size * recipe.grad_accum
    micro = recipe.batch_size
    if nproc > 0 and rows_per_step >= nproc:
        micro = min(micro, rows_per_step // nproc)
    per_epoch = None
    if train_rows is not None and nproc > 0 and rows_per_step >= nproc:
        per_epoch = (train_rows // nproc) // (rows_per_step // nproc)
    epochs = max(1, math.ceil(recipe.epochs))
    total: int | None = None
    if recipe.max_steps > 0:
        total = recipe.max_steps
    elif not float(recipe.epochs).is_integer() and per_epoch:
        total = max(1, math.ceil(per_epoch * recipe.epochs))  # as the embedded trainer
    if total is not None and per_epoch:
        epochs = math.ceil(total / per_epoch)
    return micro, epochs, total


@dataclass(frozen=True)
class PreparedData:
    """The TITO rows prepared for verl (`_prepare_data`)."""

    meta: dict[str, Any]  # the training parquet's coop_dag.tito metadata
    recipe: Any  # the recipe they were prepared for: upweight as copies
    train_rows: list[dict]
    prep: Any  # coop_dag.training.rows.PrepStats
    val_rows: list[dict]
    val_prep: Any


def prepare_data(
    student: Any, train_path: Path, val_path: Path | None, recipe: Any, log: LogFn
) -> PreparedData:
    """The parquets' rows, checked against the student's tokenizer and template, prepared for
    `recipe` as the embedded trainer prepares them but with upweight as copies (verl's SFT loss
    has no per-row weight: a non-integer weight is refused). Validation is dropped when it
    has fewer rows than one step (verl drops the last incomplete batch)."""
    from coop_dag.training.errors import EmptyTrainingSetError
    from coop_dag.training.rows import check_parquet_identity, prepare_rows, read_parquet_rows

    rows, meta = read_parquet_rows(train_path)
    check_parquet_identity(
        train_path, meta, student.tokenizer_sha256, student.chat_template_sha256,
        student=student.name,
    )  # fmt: skip
    val_raw: list[dict] = []
    if val_path is not None and val_path.is_file():
        val_raw, val_meta = read_parquet_rows(val_path)
        check_parquet_identity(
            val_path, val_meta, student.tokenizer_sha256, student.chat_template_sha256,
            student=student.name,
        )  # fmt: skip
    if not rows:
        raise EmptyTrainingSetError(f"{train_path}: the training parquet has no row")
    as_copies = recipe.replace(upweight_mode="duplicate")
    train_rows, prep = prepare_rows(rows, as_copies)
    if not train_rows:
        raise EmptyTrainingSetError(
            f"{train_path}: no training row left after preparing {prep.rows_in} rows for recipe "
            f"'{recipe.name}': {prep.as_dict()}"
        )
    weighted = sorted({float(r["weight"]) for r in train_rows if float(r["weight"]) != 1.0})
    if weighted:
        raise VerlError(
            f"{train_path}: rows with loss weights {weighted[:5]} cannot be trained as copies "
            "and verl's SFT loss has no per-row weight; use integer upweights"
        )
    val_rows, val_prep = prepare_rows(val_raw, as_copies, expand=False)
    if recipe.max_val_rows > 0:
        val_rows = val_rows[: recipe.max_val_rows]
    rows_per_step = recipe.batch_size * recipe.grad_accum
    if val_rows and len(val_rows) < rows_per_step:
        log(
            f"[coop-dag] no validation: {len(val_rows)} val rows < {rows_per_step} rows per "
            "step, and verl drops the last incomplete batch (drop_last=True)"
        )
        val_rows = []
    return PreparedData(meta, as_copies, train_rows, prep, val_rows, val_prep)


def write_data(
    run_dir: Path, data: PreparedData, train_path: Path, val_path: Path | None
) -> tuple[Path, Path | None]:
    """``data/{train,val}.parquet`` in `run_dir` (val: None without validation rows); a file
    already there is kept: the rows are deterministic, and so is the run record."""
    from coop_dag.training.rows import write_rows

    data_meta = {
        "format": data.meta.get("format"),
        "variant": data.meta.get("variant"),
        "tokenizer": data.meta.get("tokenizer"),
        "chat_template_sha256": data.meta.get("chat_template_sha256"),
        "prepared_for_recipe": data.recipe.to_json(),
        "prepared_for": BACKEND,
        "source": str(train_path),
    }
    data_dir = run_dir / "data"
    train_file = data_dir / "train.parquet"
    val_file = data_dir / "val.parquet" if data.val_rows else None
    if not train_file.is_file():
        write_rows(data.train_rows, train_file, data_meta)
    if val_file is not None and not val_file.is_file():
        write_rows(data.val_rows, val_file, {**data_meta, "source": str(val_path)})
    return train_file, val_file
