"""The run contract both trainers share (the embedded `coop_dag.training.train.train_lora` and
verl's `coop_dag.training.verl.train_lora_verl`): what identifies a run (:func:`run_key_for`),
the lineage facts every adapter carries (:func:`run_lineage`), the result a run returns and
records (:class:`TrainResult`), its loss curve (:func:`write_loss_curve`), progress events as
log lines (:func:`format_event`) and the atomic adapter copy (:func:`copy_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from coop_dag.training.adapters import ADAPTER_WEIGHTS, adapter_sha12
from coop_dag.training.errors import TrainError
from coop_dag.training.recipes import Recipe
from coop_dag.util.files import atomic_write, atomic_write_json

RESULT_FILE = "train_result.json"
LOSS_JSON = "loss_curve.json"
LOSS_PNG = "loss_curve.png"
# The embedded trainer's identity: run_key_for's default engine (part of its run keys).
BACKEND = "embedded-hf-trainer"
TRAINER_VERSION = "1"  # bump when training semantics change: a run never resumes across it

ProgressFn = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------
# what a run is and what it records
# --------------------------------------------------------------------------------------


def run_key_for(
    student: Any, recipe: Recipe, train_sha: str, val_sha: str | None, **engine: Any
) -> str:
    """What identifies a training run: resume only ever continues the same run. ``engine``:
    the trainer's own identity (default: this embedded trainer's backend and version)."""
    blob = json.dumps(
        {
            "student": student.name,
            "tokenizer": student.tokenizer_sha256,
            "template": student.chat_template_sha256,
            "weights": str(student.manifest.get("cache_key") or student.model_dir),
            "recipe": recipe.to_json(),
            "train": train_sha,
            "val": val_sha,
            **(engine or {"backend": BACKEND, "trainer_version": TRAINER_VERSION}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_lineage(
    student: Any,
    recipe: Recipe,
    facts: dict | None,
    meta: dict,
    data_version: str,
    train: tuple[Path | str, str],
    val: tuple[Path | str | None, str | None],
    **trainer: Any,
) -> dict[str, Any]:
    """The lineage facts every trainer writes into ``lineage.json``: upstream ``facts``, the
    trainer's identity, student, data (paths, sha256s, parquet metadata ``meta``), recipe and
    code version. ``train``/``val``: (parquet path, sha256)."""
    (train_path, train_sha), (val_path, val_sha) = train, val
    try:
        from coop_dag.eval.lineage import code_version

        code = code_version()
    except Exception:  # noqa: BLE001 - lineage must not fail the run
        code = "unknown"
    return {
        **(facts or {}),
        **trainer,
        "student": student.name,
        "student_kind": student.kind,
        "base_model": str(student.model_dir),
        "tokenizer_sha256": student.tokenizer_sha256,
        "chat_template_sha256": student.chat_template_sha256,
        "parquet_data_version": data_version,
        "train_parquet": str(train_path),
        "train_parquet_sha256": train_sha,
        "val_parquet": str(val_path) if val_path else None,
        "val_parquet_sha256": val_sha,
        "parquet_variant": meta.get("variant"),
        "parquet_upweight": meta.get("upweight"),
        "parquet_strip": meta.get("strip"),
        "recipe": recipe.name,
        "recipe_config": recipe.to_json(),
        "code_version": code,
    }


@dataclass
class TrainResult:
    adapter_dir: Path
    run_dir: Path
    run_key: str
    steps: int
    max_steps: int
    epochs: float
    train_loss: float | None  # mean over the last logged steps (see loss_curve)
    initial_val_loss: float | None
    final_val_loss: float | None
    val_losses: list[dict]  # [{"step", "epoch", "val_loss"}]
    train_losses: list[dict]  # [{"step", "epoch", "loss", "learning_rate"}]
    tokens_seen: int
    trained_tokens: int
    wall_time_s: float  # this call
    train_time_s: float  # all training calls of this run (resumes included)
    tokens_per_s: float
    trainable_params: int
    total_params: int
    resumed_from_step: int | None
    reused: bool  # the run had already finished: nothing trained in this call
    train_rows: int
    val_rows: int
    prep: dict
    recipe: dict
    lineage: dict
    loss_curve_json: Path
    loss_curve_png: Path | None
    adapter_sha12: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, Path):
                out[k] = str(v)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainResult:
        """The result a finished run recorded (`as_dict`'s JSON; unknown keys ignored): what
        both trainers return when a run is reused."""
        values = {k: v for k, v in record.items() if k in {f.name for f in fields(cls)}}
        for k in ("adapter_dir", "run_dir", "loss_curve_json"):
            values[k] = Path(values[k])
        if values.get("loss_curve_png"):
            values["loss_curve_png"] = Path(values["loss_curve_png"])
        return cls(**values)

    @property
    def val_loss_fell(self) -> bool:
        return (
            self.initial_val_loss is not None
            and self.final_val_loss is not None
            and self.final_val_loss < self.initial_val_loss
        )


def format_event(event: dict[str, Any]) -> str:
    """One progress event as a log line."""
    kind = event.get("event")
    if kind == "step":
        return (
            f"step {event['step']}/{event['max_steps']} epoch {event.get('epoch', 0):.2f} "
            f"loss {event['loss']:.4f} lr {event.get('learning_rate') or 0:.2e} "
            f"tokens {event.get('tokens_seen') or 0} ({event.get('tokens_per_s') or 0:.0f} tok/s)"
        )
    if kind == "eval":
        return (
            f"val_loss {event['val_loss']:.4f} at step {event['step']} "
            f"(epoch {event.get('epoch', 0):.2f})"
        )
    if kind == "checkpoint":
        return f"checkpoint at step {event['step']}: {event['path']}"
    if kind == "start":
        resumed = event.get("resumed_from_step")
        how = f"resuming from step {resumed}" if resumed else "from scratch"
        return (
            f"training {event['student']} with recipe {event['recipe']}: {event['train_rows']} "
            f"rows ({event['val_rows']} val), {event['max_steps']} steps, "
            f"{event['trainable_params']} trainable params, "
            f"{event.get('torch_threads', '?')} threads, {how}"
        )
    if kind == "end":
        return (
            f"done: {event['steps']} steps, train loss {event.get('train_loss')}, val loss "
            f"{event.get('initial_val_loss')} -> {event.get('final_val_loss')}, "
            f"{event.get('wall_time_s', 0):.0f}s"
        )
    return json.dumps(event, default=str)


# --------------------------------------------------------------------------------------
# loss curve
# --------------------------------------------------------------------------------------


def curves_from_history(history: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for e in history:
        if "loss" in e and "step" in e:
            train.append(
                {
                    "step": e["step"],
                    "epoch": e.get("epoch"),
                    "loss": e["loss"],
                    "learning_rate": e.get("learning_rate"),
                    "tokens_seen": e.get("tokens_seen"),
                }
            )
        elif "val_loss" in e:
            val.append(
                {"step": e.get("step", 0), "epoch": e.get("epoch"), "val_loss": e["val_loss"]}
            )
    return train, val


def write_loss_curve(
    out_dir: Path, train: list[dict], val: list[dict], title: str = ""
) -> tuple[Path, Path | None]:
    """``loss_curve.json`` and ``loss_curve.png`` (None when matplotlib cannot draw)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / LOSS_JSON
    curves = {"train": train, "val": val, "title": title}
    atomic_write_json(json_path, curves, sort_keys=True, default=str)
    png = out_dir / LOSS_PNG
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - the JSON is the record; the picture is a convenience
        return json_path, None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([t["step"] for t in train], [t["loss"] for t in train], label="train", lw=1.2)
    if val:
        ax.plot([v["step"] for v in val], [v["val_loss"] for v in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per trained token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return json_path, png


# --------------------------------------------------------------------------------------
# the adapter, copied into place
# --------------------------------------------------------------------------------------


def make_readable(directory: Path) -> None:
    """``0755`` on the directory, ``0644`` on its files (staging dirs and temp files are
    created private; a serving engine running as another user must read the adapter)."""
    os.chmod(directory, 0o755)
    for item in directory.iterdir():
        if item.is_file():
            os.chmod(item, 0o644)


def copy_adapter(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy an adapter directory to ``dest`` atomically (staged next to it, then renamed); an
    existing ``dest`` with the same weights is kept as is (content-addressed names)."""
    src, dest = Path(src), Path(dest)
    if dest.is_dir() and (dest / ADAPTER_WEIGHTS).is_file():
        if adapter_sha12(dest) == adapter_sha12(src):
            return dest
        raise TrainError(f"{dest} exists with other weights; refusing to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for item in src.iterdir():
            if item.is_file():
                shutil.copy2(item, stage / item.name)
        make_readable(stage)
        os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest
