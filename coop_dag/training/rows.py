"""TITO parquet in, training rows out: the reader, the tokenizer / chat-template identity
check, and :func:`prepare_rows`, which shapes rows for a recipe (``max_turn``, identical
upweight copies, packing, ``upweight_mode``, ``max_length``). Both trainers train on these
rows: the embedded one (`coop_dag.training.train`) and verl (`coop_dag.training.verl`), which
writes them with :func:`write_rows` for its own dataset to read. :func:`load_training_data` is
the embedded trainer's first step: both parquets read, checked, prepared and hashed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coop_dag.training.errors import (
    ChatTemplateMismatchError,
    EmptyTrainingSetError,
    TokenizerMismatchError,
    TrainError,
)
from coop_dag.training.recipes import Recipe
from coop_dag.util.files import file_sha256

# A row on its way through prepare_rows: [source row, ids, loss spans, span turns, weight].
Staged = list


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
    staged = _cut_to_max_turn(rows, recipe.max_turn, stats)
    items = _collapse_identical(staged, stats)
    shaped = _pack(items, stats) if recipe.packing else _unpack(items, stats)
    result = _weigh_and_fit(shaped, recipe, expand, stats)
    stats.rows_out = len(result)
    return result, stats


def _cut_to_max_turn(rows: Iterable[dict], max_turn: int | None, stats: PrepStats) -> list[Staged]:
    """Step 1: each row staged, its spans after ``max_turn`` dropped (and its ids cut there)."""
    staged: list[Staged] = []
    for row in rows:
        stats.rows_in += 1
        ids = list(row["input_ids"]) + list(row["output_ids"])
        spans = _spans(row)
        turns = _span_turns(row, len(spans))
        weight = float(row.get("weight", 1.0) if row.get("weight") is not None else 1.0)
        if max_turn is not None:
            keep = [j for j, t in enumerate(turns) if t <= max_turn]
            if not keep:
                stats.dropped_max_turn += 1
                continue
            if len(keep) < len(spans):
                stats.cut_max_turn += 1
                spans = [spans[j] for j in keep]
                turns = [turns[j] for j in keep]
                ids = ids[: spans[-1][1]]
        staged.append([row, ids, spans, turns, weight])
    return staged


def _collapse_identical(staged: list[Staged], stats: PrepStats) -> list[Staged]:
    """Step 2: identical rows become one row carrying the sum of their weights."""
    merged: dict[tuple, Staged] = {}
    for row, ids, spans, turns, weight in staged:
        key = (row.get("traj_id"), tuple(ids), tuple(map(tuple, spans)))
        if key in merged:
            merged[key][4] += weight
            stats.collapsed_duplicates += 1
        else:
            merged[key] = [row, ids, spans, turns, weight]
    return list(merged.values())


def _pack(items: list[Staged], stats: PrepStats) -> list[Staged]:
    """Step 3, packing on: per trajectory (first-seen order), by first turn, a row whose ids
    extend the current row's exactly (same weight) is merged into it."""
    by_traj: dict[Any, list[Staged]] = {}
    for it in items:
        by_traj.setdefault(it[0].get("traj_id"), []).append(it)
    out: list[Staged] = []
    for traj, group in by_traj.items():
        cur: Staged | None = None
        for it in sorted(group, key=lambda it: it[3][0]):
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
    return out


def _unpack(items: list[Staged], stats: PrepStats) -> list[Staged]:
    """Step 3, packing off: one row per turn, its ids up to the end of that turn's span."""
    out: list[Staged] = []
    for row, ids, spans, turns, weight in items:
        for j, (s, e) in enumerate(spans):
            out.append([row, ids[:e], [[s, e]], [turns[j]], weight])
        stats.unpacked_rows_added += len(spans) - 1
    return out


def _weigh_and_fit(
    items: list[Staged], recipe: Recipe, expand: bool, stats: PrepStats
) -> list[dict]:
    """Steps 4 and 5: zero weights dropped, ``max_length`` applied, duplicate-mode weights
    expanded into copies; the finished rows."""
    result: list[dict] = []
    for row, ids, spans, turns, weight in items:
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
    return result


def write_rows(rows: Sequence[dict], path: Path, metadata: dict) -> Path:
    """Prepared rows as a TITO parquet (``coop_dag.tito.parquet.write_parquet``, atomic)."""
    from coop_dag.tito.parquet import write_parquet

    return write_parquet(rows, path, metadata)


@dataclass
class TrainingData:
    """The training data of a run: prepared rows, their source metadata and sha256s."""

    train_path: Path
    val_path: Path | None
    meta: dict
    train_rows: list[dict]
    val_rows: list[dict]
    prep: PrepStats
    val_prep: PrepStats
    train_sha: str
    val_sha: str | None


def load_training_data(
    student: Any, recipe: Recipe, train_path: Path, val_path: Path | None, check_template: bool
) -> TrainingData:
    """Read and identity-check both parquets (before any work), prepare their rows for the
    recipe and hash the files (the run key's data identity)."""
    template = student.chat_template_sha256 if check_template else None
    rows, meta = read_parquet_rows(train_path)
    check_parquet_identity(
        train_path, meta, student.tokenizer_sha256, template, student=student.name
    )
    val_rows_raw: list[dict] = []
    if val_path is not None and val_path.is_file():
        val_rows_raw, val_meta = read_parquet_rows(val_path)
        check_parquet_identity(
            val_path, val_meta, student.tokenizer_sha256, template, student=student.name
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
    return TrainingData(
        train_path=train_path,
        val_path=val_path,
        meta=meta,
        train_rows=train_rows,
        val_rows=val_rows,
        prep=prep,
        val_prep=val_prep,
        train_sha=file_sha256(train_path),
        val_sha=file_sha256(val_path) if val_path is not None and val_path.is_file() else None,
    )
