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
  ``C = rows per step * mean_rows(w * n_tokens)`` (:func:`loss_normaliser`). A constant, not
  the step's own weighted token count: with one row per step a per-step normalisation would
  cancel the weight. So a row of weight 0 contributes no gradient and leaves the others' alone,
  weight ``w`` is exactly ``w`` copies of the row in the step, and ``w`` scales a one-row
  step's loss by ``w``. (The logged step loss is therefore ``n_tokens / mean n_tokens`` times
  the row's token mean; the validation loss is the exact weighted token mean.) Logits are
  only computed where a label is (the LM head over a 49k vocabulary is ~20 % of a 135M
  model's FLOPs on a 1k-token prompt).
- **Data shape from the recipe** (:func:`prepare_rows`): ``max_turn`` keeps turns
  ``0..max_turn`` (packed rows are cut after the last kept turn), ``upweight_mode`` trains
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
  ``checkpoint`` and ``end`` events (:func:`format_event` renders one as a log line).

Why the HF ``Trainer`` and not a hand-written loop: it brings checkpoint/resume (optimizer,
scheduler, RNG, data-order skipping), gradient accumulation and LR schedules; the custom parts
are a collator (dynamic padding of ``TitoSFTDataset`` items), ``compute_loss`` (weights,
logits only where trained) and an atomic ``_save_checkpoint``. Its per-step overhead is
negligible next to a CPU forward/backward of a 1k-token row (measured in
``bench/bench_train.py``).

No Dagster here: ``assets/training.py`` wraps :func:`train_lora`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from coop_dag.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_sha12,
    validate_adapter,
    write_lineage,
)
from coop_dag.training.errors import (
    ChatTemplateMismatchError,
    EmptyTrainingSetError,
    TokenizerMismatchError,
    TrainError,
)
from coop_dag.training.recipes import (
    Recipe,
    get_recipe,
)
from coop_dag.util.files import atomic_write, atomic_write_json, file_sha256

CHECKPOINT_PREFIX = "checkpoint-"
RESULT_FILE = "train_result.json"
LOSS_JSON = "loss_curve.json"
LOSS_PNG = "loss_curve.png"
BACKEND = "embedded-hf-trainer"
TRAINER_VERSION = "1"  # bump when training semantics change: a run never resumes across it
IGNORE_INDEX = -100

ProgressFn = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------
# parquet in, rows prepared for the recipe
# --------------------------------------------------------------------------------------


def read_parquet_rows(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """``(rows, metadata)`` of a TITO parquet file (metadata: the ``coop_dag.tito`` JSON)."""
    from coop_dag.tito.parquet import read_tito_parquet

    p = Path(path)
    if not p.is_file():
        raise TrainError(f"TITO parquet not found: {p}")
    table, metadata = read_tito_parquet(p)
    missing = {"input_ids", "output_ids"} - set(table.column_names)
    if missing:
        raise TrainError(f"{p}: not a TITO parquet (missing columns {sorted(missing)})")
    return table.to_pylist(), metadata


def parquet_tokenizer_sha(metadata: dict) -> str | None:
    tok = metadata.get("tokenizer")
    if isinstance(tok, dict):
        return tok.get("sha256")
    return metadata.get("tokenizer_sha256")


def check_parquet_identity(
    path: str | os.PathLike,
    metadata: dict,
    tokenizer_sha256: str,
    chat_template_sha256: str | None = None,
    *,
    student: str = "",
) -> None:
    """Refuse a parquet tokenised for another tokenizer (or rendered with another template)."""
    got = parquet_tokenizer_sha(metadata)
    if not got:
        raise TokenizerMismatchError(
            f"{path}: no tokenizer sha256 in the parquet metadata (key 'coop_dag.tito' -> "
            "tokenizer.sha256); cannot verify it was tokenised for student "
            f"'{student}' -- rebuild it with coop_dag.tito.build"
        )
    if got != tokenizer_sha256:
        raise TokenizerMismatchError(
            f"{path}: tokenised with tokenizer sha256 {got[:16]}..., but student '{student}' "
            f"has {tokenizer_sha256[:16]}...: the ids would mean different tokens; rebuild the "
            "TITO parquet with the student's tokenizer"
        )
    tmpl = metadata.get("chat_template_sha256")
    if chat_template_sha256 and tmpl and tmpl != chat_template_sha256:
        raise ChatTemplateMismatchError(
            f"{path}: prompts rendered with chat template sha256 {tmpl[:16]}..., but student "
            f"'{student}' uses {chat_template_sha256[:16]}...: training and inference prompts "
            "would differ (the seed's format-drift failure); rebuild the TITO parquet"
        )


def _spans(row: dict) -> list[list[int]]:
    spans = row.get("loss_spans")
    if not spans:
        n = len(row["input_ids"])
        return [[n, n + len(row["output_ids"])]]
    return [[int(s), int(e)] for s, e in spans]


def _span_turns(row: dict, n: int) -> list[int]:
    turns = row.get("span_turns")
    if turns and len(turns) == n:
        return [int(t) for t in turns]
    return [int(row.get("turn_index") or 0)] * n


def _make_row(base: dict, ids: list[int], spans: list[list[int]], turns: list[int], weight: float):
    last = spans[-1][0]
    row = {k: v for k, v in base.items() if k not in ("input_ids", "output_ids")}
    row.update(
        input_ids=list(ids[:last]),
        output_ids=list(ids[last : spans[-1][1]]),
        loss_spans=[list(s) for s in spans],
        span_turns=list(turns),
        turn_index=int(turns[0]),
        weight=float(weight),
    )
    if row.get("span_actions") is not None and len(row["span_actions"]) != len(spans):
        row["span_actions"] = None
    return row


@dataclass
class PrepStats:
    rows_in: int = 0
    dropped_max_turn: int = 0
    cut_max_turn: int = 0
    collapsed_duplicates: int = 0
    unpacked_rows_added: int = 0
    packed_rows_merged: int = 0
    expanded_copies: int = 0
    truncated: int = 0
    dropped_truncated: int = 0
    dropped_zero_weight: int = 0
    rows_out: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def prepare_rows(
    rows: Iterable[dict], recipe: Recipe, *, expand: bool = True
) -> tuple[list[dict], PrepStats]:
    """Training rows for ``recipe`` from TITO rows, in a deterministic order.

    1. ``max_turn``: spans of later turns are dropped; a packed row is cut after its last kept
       span; a row with none left is dropped.
    2. identical rows (same trajectory, ids and spans: TITO's ``duplicate`` upweight copies)
       collapse into one row whose weight is the sum of theirs.
    3. ``packing``: on -- a trajectory's rows merge when the next row's ids extend the current
       row's exactly and the weights are equal; off -- a packed row splits into one row per
       turn (turn k's ids are the row's ids up to the end of span k: its unpacked prompt and
       output).
    4. ``upweight_mode``: ``duplicate`` (and ``expand``) -- a row of integer weight w > 1
       becomes w rows of weight 1; ``weight`` -- the weight stays a loss weight.
    5. ``max_length``: ``error`` raises naming the row; ``left``/``right`` rows lose no row
       here (``TitoSFTDataset`` cuts them) unless no trained token would survive the cut, in
       which case they are dropped and counted.
    """
    stats = PrepStats()
    staged: list[tuple[dict, list[int], list[list[int]], list[int], float]] = []
    for row in rows:
        stats.rows_in += 1
        ids = list(row["input_ids"]) + list(row["output_ids"])
        spans = _spans(row)
        turns = _span_turns(row, len(spans))
        weight = float(row.get("weight", 1.0) if row.get("weight") is not None else 1.0)
        if recipe.max_turn is not None:
            keep = [j for j, t in enumerate(turns) if t <= recipe.max_turn]
            if not keep:
                stats.dropped_max_turn += 1
                continue
            if len(keep) < len(spans):
                stats.cut_max_turn += 1
                spans = [spans[j] for j in keep]
                turns = [turns[j] for j in keep]
                ids = ids[: spans[-1][1]]
        staged.append((row, ids, spans, turns, weight))

    # 2. collapse identical rows
    merged: dict[tuple, list] = {}
    for row, ids, spans, turns, weight in staged:
        key = (row.get("traj_id"), tuple(ids), tuple(map(tuple, spans)))
        if key in merged:
            merged[key][4] += weight
            stats.collapsed_duplicates += 1
        else:
            merged[key] = [row, ids, spans, turns, weight]
    items = list(merged.values())

    # 3. packing
    out: list[list] = []
    if recipe.packing:
        by_traj: dict[Any, list[list]] = {}
        order: list[Any] = []
        for it in items:
            traj = it[0].get("traj_id")
            if traj not in by_traj:
                by_traj[traj] = []
                order.append(traj)
            by_traj[traj].append(it)
        for traj in order:
            group = sorted(by_traj[traj], key=lambda it: it[3][0])
            cur: list | None = None
            for it in group:
                _, ids, spans, turns, weight = it
                if (
                    cur is not None
                    and traj is not None
                    and cur[4] == weight
                    and len(ids) > len(cur[1])
                    and spans[0][0] >= len(cur[1])
                    and ids[: len(cur[1])] == cur[1]
                ):
                    cur[1] = ids
                    cur[2] = cur[2] + spans
                    cur[3] = cur[3] + turns
                    stats.packed_rows_merged += 1
                    continue
                cur = [it[0], ids, list(spans), list(turns), weight]
                out.append(cur)
    else:
        for row, ids, spans, turns, weight in items:
            for j, (s, e) in enumerate(spans):
                out.append([row, ids[:e], [[s, e]], [turns[j]], weight])
            stats.unpacked_rows_added += len(spans) - 1

    # 4/5. weights, length
    result: list[dict] = []
    for row, ids, spans, turns, weight in out:
        if weight <= 0:
            stats.dropped_zero_weight += 1
            continue
        n = len(ids)
        if n > recipe.max_length:
            if recipe.truncation == "error":
                raise TrainError(
                    f"row {row.get('traj_id')} turn {turns[0]} has {n} tokens > max_length "
                    f"{recipe.max_length} (truncation=error)"
                )
            stats.truncated += 1
            cut = n - recipe.max_length if recipe.truncation == "left" else 0
            end = n if recipe.truncation == "left" else recipe.max_length
            if sum(max(0, min(e, end) - max(s, cut)) for s, e in spans) == 0:
                stats.dropped_truncated += 1
                continue
        copies = 1
        if recipe.upweight_mode == "duplicate" and expand and float(weight).is_integer():
            copies = int(weight)
            weight = 1.0
            stats.expanded_copies += copies - 1
        made = _make_row(row, ids, spans, turns, weight)
        for _ in range(copies):
            result.append(made)
            stats.total_tokens += min(n, recipe.max_length)
            stats.trained_tokens += sum(e - s for s, e in spans)
    stats.rows_out = len(result)
    return result, stats


def write_rows(rows: Sequence[dict], path: Path, metadata: dict) -> Path:
    """Prepared rows as a TITO parquet (``coop_dag.tito.parquet.write_parquet``, atomic)."""
    from coop_dag.tito.parquet import write_parquet

    return write_parquet(rows, path, metadata)


# --------------------------------------------------------------------------------------
# batches and loss
# --------------------------------------------------------------------------------------


class TitoCollator:
    """Pads ``TitoSFTDataset`` items (``pad_mode=no_padding``) to the longest in the batch:
    ``input_ids`` with the pad id, ``labels`` with -100, an ``attention_mask``; ``weight`` is
    stacked to shape ``(batch,)``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = int(pad_token_id)

    def __call__(self, items: Sequence[dict]) -> dict:
        import torch

        width = max(int(it["input_ids"].shape[0]) for it in items)
        ids = torch.full((len(items), width), self.pad, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = int(it["input_ids"].shape[0])
            ids[i, :n] = it["input_ids"]
            labels[i, :n] = it["labels"]
            mask[i, :n] = 1
        weight = torch.cat([it["weight"].reshape(-1)[:1] for it in items]).float()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weight": weight}


def weighted_token_count(batch: dict):
    """``sum_rows w * (number of trained next-token targets)`` of a collated batch."""
    targets = batch["labels"][:, 1:] != IGNORE_INDEX
    return (targets.sum(dim=1).float() * batch["weight"].float()).sum()


def loss_normaliser(dataset: Any, rows_per_step: int) -> float:
    """``C = rows_per_step * mean_rows(w * trained targets)`` over ``dataset`` (a
    ``TitoSFTDataset``): dividing a step's ``sum w * ce`` by it estimates the training set's
    weighted token-mean loss without bias."""
    total = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        targets = int((item["labels"][1:] != IGNORE_INDEX).sum())
        total += float(item["weight"].reshape(-1)[0]) * targets
    mean = total / max(1, len(dataset))
    return max(mean, 1e-12) * rows_per_step


def step_loss(model: Any, batch: dict, normaliser: float, *, slice_logits: bool = True):
    """``(loss, trained targets)`` of one (micro-)batch: ``sum w * ce / normaliser``."""
    num, _, n = weighted_loss_terms(model, batch, slice_logits=slice_logits)
    return num / normaliser, n


def weighted_loss_terms(model: Any, batch: dict, *, slice_logits: bool = True):
    """``(sum of w * ce over trained tokens, weighted token count, trained tokens)`` of a
    batch. Logits are computed only at positions whose next token is trained when the model
    supports ``logits_to_keep`` with a boolean mask."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    weight = batch["weight"].float()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    row_w = weight[:, None].expand_as(labels)[keep]
    if slice_logits:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
            use_cache=False,
        )
        logits = out.logits.reshape(-1, out.logits.shape[-1])
    else:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        logits = out.logits[keep]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce * row_w).sum(), row_w.sum(), int(targets.numel())


def _supports_logits_mask(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def evaluate_loss(
    model: Any, dataset: Any, collator: TitoCollator, batch_size: int = 1, slice_logits=True
) -> float | None:
    """Weighted token-mean loss of ``model`` over ``dataset`` (None when it has no row)."""
    import torch

    if dataset is None or len(dataset) == 0:
        return None
    was_training = model.training
    model.eval()
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            stop = min(len(dataset), start + batch_size)
            batch = collator([dataset[i] for i in range(start, stop)])
            s, w, _ = weighted_loss_terms(model, batch, slice_logits=slice_logits)
            num += s.double()
            den += w.double()
    if was_training:
        model.train()
    return float(num / den) if den > 0 else None


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


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
# the HF Trainer, customised
# --------------------------------------------------------------------------------------




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


def _clean_staging(ckpt_dir: Path) -> None:
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(".stage-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def _make_trainer_class():
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
            final = root / name
            old = None
            if final.exists():
                old = root / f".old-{name}-{os.getpid()}"
                os.replace(final, old)
            os.replace(stage / name, final)
            shutil.rmtree(stage, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            for stale in complete_checkpoints(root)[: -self.keep_checkpoints]:
                shutil.rmtree(stale, ignore_errors=True)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.state.global_step, final)

    return TitoTrainer


def _make_callback(progress: ProgressFn | None, val_dataset, collator, slice_logits: bool):
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
# the run
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


def _lora_config(recipe: Recipe):
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


def _versions() -> dict[str, str]:
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

    ``progress`` gets every event (see :func:`format_event`); an exception it raises aborts
    the run where it is (the last complete checkpoint stays, and a rerun resumes from it).
    Raises :class:`TokenizerMismatchError` / :class:`ChatTemplateMismatchError` before any
    work, :class:`EmptyTrainingSetError` when no row is left to train on.
    """
    started = time.monotonic()
    if isinstance(student, str):
        from coop_dag.training.students import get_student

        student = get_student(student)
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    train_path = Path(train_path)
    val_path = Path(val_path) if val_path else None

    rows, meta = read_parquet_rows(train_path)
    check_parquet_identity(
        train_path,
        meta,
        student.tokenizer_sha256,
        student.chat_template_sha256 if check_chat_template else None,
        student=student.name,
    )
    val_rows_raw: list[dict] = []
    if val_path is not None and val_path.is_file():
        val_rows_raw, val_meta = read_parquet_rows(val_path)
        check_parquet_identity(
            val_path,
            val_meta,
            student.tokenizer_sha256,
            student.chat_template_sha256 if check_chat_template else None,
            student=student.name,
        )
    if not rows:
        raise EmptyTrainingSetError(f"{train_path}: the training parquet has no row")
    train_rows, prep = prepare_rows(rows, recipe)
    if not train_rows:
        raise EmptyTrainingSetError(
            f"{train_path}: no training row left after preparing {prep.rows_in} rows for recipe "
            f"'{recipe.name}' (max_turn={recipe.max_turn}, max_length={recipe.max_length}, "
            f"truncation={recipe.truncation}): {prep.as_dict()}"
        )
    val_rows, val_prep = prepare_rows(val_rows_raw, recipe, expand=False)
    if recipe.max_val_rows > 0:
        val_rows = val_rows[: recipe.max_val_rows]

    train_sha = file_sha256(train_path)
    val_sha = file_sha256(val_path) if val_path is not None and val_path.is_file() else None
    key = run_key_for(student, recipe, train_sha, val_sha)
    run_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    run_dir = run_dir / key
    ckpt_dir = run_dir / "checkpoints"
    adapter_dir = run_dir / "adapter"
    result_file = run_dir / RESULT_FILE
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if result_file.is_file() and adapter_dir.is_dir():
        done = json.loads(result_file.read_text())
        done.update(reused=True, wall_time_s=round(time.monotonic() - started, 2))
        return TrainResult.from_record(done)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clean_staging(ckpt_dir)
    _clean_staging(run_dir)

    from peft import get_peft_model
    from transformers import TrainingArguments, set_seed

    from coop_dag.tito.dataset import TitoSFTDataset

    data_meta = {
        "format": meta.get("format"),
        "variant": meta.get("variant"),
        "tokenizer": meta.get("tokenizer"),
        "chat_template_sha256": meta.get("chat_template_sha256"),
        "prepared_for_recipe": recipe.to_json(),
        "source": str(train_path),
    }
    data_dir = run_dir / "data"
    train_file = write_rows(train_rows, data_dir / "train.parquet", data_meta)
    val_file = write_rows(val_rows, data_dir / "val.parquet", data_meta) if val_rows else None

    tokenizer = student.load_tokenizer()
    ds_cfg = {
        "max_length": recipe.max_length,
        "truncation": recipe.truncation,
        "pad_mode": "no_padding",
    }
    train_ds = TitoSFTDataset(str(train_file), tokenizer, ds_cfg)
    val_ds = TitoSFTDataset(str(val_file), tokenizer, ds_cfg) if val_file else None
    collator = TitoCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    resume = complete_checkpoints(ckpt_dir)
    resume_from = resume[-1] if resume else None
    resumed_step = int(resume_from.name[len(CHECKPOINT_PREFIX) :]) if resume_from else None

    with torch_threads(recipe.torch_threads) as n_threads:
        set_seed(recipe.seed)
        base = model if model is not None else student.load_model()
        base.config.use_cache = False
        net = get_peft_model(base, _lora_config(recipe))
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        slice_logits = _supports_logits_mask(net)

        steps_per_epoch = math.ceil(len(train_ds) / (recipe.batch_size * recipe.grad_accum))
        max_steps = (
            recipe.max_steps
            if recipe.max_steps > 0
            else max(1, math.ceil(steps_per_epoch * recipe.epochs))
        )
        args = TrainingArguments(
            output_dir=str(ckpt_dir),
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
        normaliser = loss_normaliser(train_ds, recipe.batch_size * recipe.grad_accum)
        cls = _make_trainer_class()
        callback = _make_callback(progress, val_ds, collator, slice_logits)
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
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for noisy in (PrinterCallback, ProgressCallback):  # we report through `progress`
            trainer.remove_callback(noisy)
        trainer.on_checkpoint = lambda step, path: (
            progress and progress({"event": "checkpoint", "step": step, "path": str(path)})
        )
        if resume_from is not None:
            _restore_counters(trainer, resume_from)
        if progress is not None:
            progress(
                {
                    "event": "start",
                    "student": student.name,
                    "recipe": recipe.name,
                    "run_key": key,
                    "run_dir": str(run_dir),
                    "train_rows": len(train_ds),
                    "val_rows": len(val_ds) if val_ds is not None else 0,
                    "max_steps": max_steps,
                    "trainable_params": trainable,
                    "resumed_from_step": resumed_step,
                    "torch_threads": n_threads,
                }
            )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        # the last epoch-end evaluation ran at the final step; make sure of it
        callback._val(trainer.state, net)
        history = list(trainer.state.log_history)
        train_time = trainer.elapsed()
        tokens_seen, trained_tokens = trainer.tokens_seen, trainer.trained_tokens
        steps = int(trainer.state.global_step)
        epoch = float(trainer.state.epoch or 0.0)

        # the adapter, staged then renamed into place
        stage = Path(tempfile.mkdtemp(prefix=".stage-adapter-", dir=run_dir))
        net.save_pretrained(str(stage), safe_serialization=True)
    _fix_adapter_config(stage, recipe, student)
    info = validate_adapter(stage, expected_base=str(student.model_dir))

    train_curve, val_curve = curves_from_history(history)
    initial_val = val_curve[0]["val_loss"] if val_curve and val_curve[0]["step"] == 0 else None
    final_val = val_curve[-1]["val_loss"] if val_curve else None
    last = [t["loss"] for t in train_curve[-max(1, min(5, len(train_curve))) :]]
    train_loss = float(sum(last) / len(last)) if last else None
    data_version = data_version or train_sha[:16]
    lineage = {
        **run_lineage(
            student,
            recipe,
            facts,
            meta,
            data_version,
            (train_path, train_sha),
            (val_path, val_sha),
            trainer=BACKEND,
            trainer_version=TRAINER_VERSION,
        ),  # fmt: skip
        "seed": recipe.seed,
        "run_key": key,
        "steps": steps,
        "max_steps": max_steps,
        "epochs": round(epoch, 4),
        "train_rows": len(train_ds),
        "val_rows": len(val_ds) if val_ds is not None else 0,
        "prep": prep.as_dict(),
        "tokens_seen": tokens_seen,
        "trained_tokens": trained_tokens,
        "train_loss": train_loss,
        "initial_val_loss": initial_val,
        "final_val_loss": final_val,
        "trainable_params": trainable,
        "total_params": total,
        "lora_r": info.r,
        "lora_alpha": info.lora_alpha,
        "train_time_s": round(train_time, 2),
        "torch_threads": n_threads,
        "resumed_from_step": resumed_step,
        "versions": _versions(),
    }
    write_lineage(stage, lineage)
    title = f"{student.name} / {recipe.name} / {info.name}"
    json_path, png_path = write_loss_curve(stage, train_curve, val_curve, title)
    _readable(stage)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(stage, adapter_dir)
    json_path, png_path = (
        adapter_dir / json_path.name,
        (adapter_dir / png_path.name if png_path else None),
    )

    result = TrainResult(
        adapter_dir=adapter_dir,
        run_dir=run_dir,
        run_key=key,
        steps=steps,
        max_steps=max_steps,
        epochs=round(epoch, 4),
        train_loss=train_loss,
        initial_val_loss=initial_val,
        final_val_loss=final_val,
        val_losses=val_curve,
        train_losses=train_curve,
        tokens_seen=tokens_seen,
        trained_tokens=trained_tokens,
        wall_time_s=round(time.monotonic() - started, 2),
        train_time_s=round(train_time, 2),
        tokens_per_s=round(tokens_seen / train_time, 2) if train_time > 0 else 0.0,
        trainable_params=trainable,
        total_params=total,
        resumed_from_step=resumed_step,
        reused=False,
        train_rows=len(train_ds),
        val_rows=len(val_ds) if val_ds is not None else 0,
        prep={"train": prep.as_dict(), "val": val_prep.as_dict()},
        recipe=recipe.to_json(),
        lineage=lineage,
        loss_curve_json=json_path,
        loss_curve_png=png_path,
        adapter_sha12=adapter_sha12(adapter_dir),
    )
    atomic_write_json(result_file, result.as_dict(), sort_keys=True, default=str)
    if progress is not None:
        progress(
            {
                "event": "end",
                "steps": steps,
                "train_loss": train_loss,
                "initial_val_loss": initial_val,
                "final_val_loss": final_val,
                "wall_time_s": result.wall_time_s,
                "adapter_dir": str(adapter_dir),
            }
        )
    return result


def _restore_counters(trainer: Any, checkpoint: Path) -> None:
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


def _readable(directory: Path) -> None:
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
        _readable(stage)
        os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest


__all__ = [
    "BACKEND",
    "ChatTemplateMismatchError",
    "EmptyTrainingSetError",
    "PrepStats",
    "TitoCollator",
    "TokenizerMismatchError",
    "TrainError",
    "TrainResult",
    "check_parquet_identity",
    "complete_checkpoints",
    "copy_adapter",
    "curves_from_history",
    "auto_threads",
    "default_work_dir",
    "evaluate_loss",
    "format_event",
    "loss_normaliser",
    "prepare_rows",
    "read_parquet_rows",
    "run_key_for",
    "run_lineage",
    "step_loss",
    "torch_threads",
    "train_lora",
    "weighted_loss_terms",
    "write_loss_curve",
]
