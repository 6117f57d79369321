"""The embedded trainer's Hugging Face parts: the ``Trainer`` subclass (weighted loss through
`coop_dag.training.loss`, token counters, atomic checkpoints), the progress callback (steps,
validation losses), its ``TrainingArguments`` and LoRA config, the datasets it reads
(:func:`tito_datasets`), checkpoint discovery and resume counters, and the CPU thread count.
Built lazily: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coop_dag.training.contract import ProgressFn
from coop_dag.training.loss import TitoCollator, evaluate_loss, step_loss
from coop_dag.training.recipes import Recipe
from coop_dag.training.rows import TrainingData, write_rows

CHECKPOINT_PREFIX = "checkpoint-"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint dirs by step, oldest first (a dir exists only once completely written)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX):
            try:
                found.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def clean_staging(ckpt_dir: Path) -> None:
    """Remove what a killed run left half written (``.stage-*``, ``.old-*``) in ``ckpt_dir``."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(".stage-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def promote_checkpoint(root: Path, stage: Path, name: str, keep: int) -> Path:
    """Rename the checkpoint ``name`` that HF wrote inside ``stage`` to ``root/name`` (an
    existing one is moved aside first, then removed), drop the staging dir and all but the
    newest ``keep`` checkpoints. A checkpoint dir therefore exists only once complete."""
    final = root / name
    old = None
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(stage / name, final)
    shutil.rmtree(stage, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def make_trainer_class():
    """The Trainer subclass (built lazily: importing this module stays cheap)."""
    from transformers import Trainer

    class TitoTrainer(Trainer):
        loss_is_scaled_for_ga = True  # compute_loss normalises over the whole step itself

        def __init__(
            self,
            *args,
            slice_logits: bool = True,
            keep_checkpoints: int = 2,
            normaliser: float = 1.0,
            **kw,
        ):
            super().__init__(*args, **kw)
            self.slice_logits = slice_logits
            self.normaliser = normaliser
            self.keep_checkpoints = keep_checkpoints
            self.tokens_seen = 0
            self.trained_tokens = 0
            self.train_time_before = 0.0
            self.started = time.monotonic()
            self.on_checkpoint: Callable[[int, Path], None] | None = None

        def elapsed(self) -> float:
            """Training seconds of this run, earlier (resumed) calls included."""
            return self.train_time_before + (time.monotonic() - self.started)

        def train(self, *args, **kw):
            self.started = time.monotonic()
            return super().train(*args, **kw)

        # -- loss ---------------------------------------------------------------------
        def _get_num_items_in_batch(self, batch_samples, device):
            return None  # the normaliser is a constant (see the module docstring)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, n_trained = step_loss(
                model, inputs, self.normaliser, slice_logits=self.slice_logits
            )
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
                self.trained_tokens += n_trained
            return (loss, None) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs:
                logs["tokens_seen"] = self.tokens_seen
                logs["trained_tokens"] = self.trained_tokens
                logs["elapsed_s"] = round(self.elapsed(), 3)
            super().log(logs, start_time)

        # -- atomic checkpoints ---------------------------------------------------------
        def _save_checkpoint(self, model, trial):
            root = Path(self.args.output_dir)
            root.mkdir(parents=True, exist_ok=True)
            name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
            stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=root))
            original = self.args.output_dir
            try:
                self.args.output_dir = str(stage)
                super()._save_checkpoint(model, trial)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            finally:
                self.args.output_dir = original
            final = promote_checkpoint(root, stage, name, self.keep_checkpoints)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.state.global_step, final)

    return TitoTrainer


def make_progress_callback(progress: ProgressFn | None, val_dataset, collator, slice_logits: bool):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Forwards steps to ``progress`` and evaluates the validation loss before training,
        at every epoch end and at the end of training (logged into the trainer state, so the
        curve survives a resume)."""

        def __init__(self) -> None:
            self.trainer = None
            self.started = time.monotonic()
            self.last_eval_step = -1

        def _emit(self, event: dict) -> None:
            if progress is not None:
                progress(event)

        def _val(self, state, model) -> None:
            if val_dataset is None or len(val_dataset) == 0:
                return
            if any(
                "val_loss" in e and e.get("step") == state.global_step for e in state.log_history
            ):
                return
            loss = evaluate_loss(model, val_dataset, collator, slice_logits=slice_logits)
            if loss is None:
                return
            self.trainer.log({"val_loss": loss})
            self.last_eval_step = state.global_step

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.started = time.monotonic()
            if state.global_step == 0:
                self._val(state, model)

        def on_epoch_end(self, args, state, control, model=None, **kw):
            self._val(state, model)
            control.should_save = True  # the checkpoint then holds this epoch's val loss
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "val_loss" in logs:
                self._emit(
                    {
                        "event": "eval",
                        "step": state.global_step,
                        "epoch": state.epoch or 0.0,
                        "val_loss": logs["val_loss"],
                    }
                )
            elif "loss" in logs:
                elapsed = float(logs.get("elapsed_s") or self.trainer.elapsed())
                tokens = logs.get("tokens_seen", 0)
                self._emit(
                    {
                        "event": "step",
                        "step": state.global_step,
                        "max_steps": state.max_steps,
                        "epoch": state.epoch or 0.0,
                        "loss": logs["loss"],
                        "learning_rate": logs.get("learning_rate"),
                        "grad_norm": logs.get("grad_norm"),
                        "tokens_seen": tokens,
                        "trained_tokens": logs.get("trained_tokens", 0),
                        "elapsed_s": round(elapsed, 2),
                        "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                    }
                )

    return ProgressCallback()


def training_arguments(recipe: Recipe, output_dir: Path, max_steps: int):
    """The ``TrainingArguments`` of a run: the recipe's optimisation settings on the CPU, a log
    entry every step, a checkpoint every ``save_steps`` (and at epoch ends, by the callback),
    no evaluation or reporting of HF's own (the callback validates, ``progress`` reports)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        max_steps=max_steps,
        num_train_epochs=max(recipe.epochs, 1.0),
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=None,
        eval_strategy="no",
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=recipe.bf16,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def restore_counters(trainer: Any, checkpoint: Path) -> None:
    """Token counters and elapsed training time from a checkpoint's trainer state."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return
    state = json.loads(state_file.read_text())
    for entry in reversed(state.get("log_history", [])):
        if "tokens_seen" in entry:
            trainer.tokens_seen = int(entry["tokens_seen"])
            trainer.trained_tokens = int(entry.get("trained_tokens", 0))
            break
    elapsed = [e.get("elapsed_s") for e in state.get("log_history", []) if "elapsed_s" in e]
    if elapsed:
        trainer.train_time_before = float(elapsed[-1])


def lora_config(recipe: Recipe):
    """PEFT's ``LoraConfig`` from the recipe (rank, alpha, dropout, target modules)."""
    from peft import LoraConfig

    targets = recipe.target_modules
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def library_versions() -> dict[str, str]:
    """Versions of the training libraries, for ``lineage.json``."""
    out = {}
    for mod in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = "unknown"
    return out


def auto_threads(requested: int = 0) -> int:
    """Torch intra-op threads: ``requested`` when > 0, else the cores nobody else is using
    (``cpu_count - round(1-minute load average)``, at least 1). On a shared 2-core machine two
    OpenMP threads competing with another busy process ran a training step 4x slower than one
    thread (45 s vs 11 s for a 1.3k-token SmolLM2 row)."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cores, cores - round(load)))


@contextlib.contextmanager
def torch_threads(n: int = 0):
    """Run a block with :func:`auto_threads` (``n``) intra-op threads, then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(auto_threads(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def tito_datasets(student: Any, recipe: Recipe, data: TrainingData, run_dir: Path):
    """``(train, validation or None, collator)``: the prepared rows written to ``data/`` and
    read back through ``TitoSFTDataset``, the same dataset class verl trains on."""
    from coop_dag.tito.dataset import TitoSFTDataset

    data_meta = {
        "format": data.meta.get("format"),
        "variant": data.meta.get("variant"),
        "tokenizer": data.meta.get("tokenizer"),
        "chat_template_sha256": data.meta.get("chat_template_sha256"),
        "prepared_for_recipe": recipe.to_json(),
        "source": str(data.train_path),
    }
    data_dir = run_dir / "data"
    train_file = write_rows(data.train_rows, data_dir / "train.parquet", data_meta)
    val_file = (
        write_rows(data.val_rows, data_dir / "val.parquet", data_meta) if data.val_rows else None
    )
    tokenizer = student.load_tokenizer()
    ds_cfg = {
        "max_length": recipe.max_length,
        "truncation": recipe.truncation,
        "pad_mode": "no_padding",
    }
    train_ds = TitoSFTDataset(str(train_file), tokenizer, ds_cfg)
    val_ds = TitoSFTDataset(str(val_file), tokenizer, ds_cfg) if val_file else None
    collator = TitoCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return train_ds, val_ds, collator
