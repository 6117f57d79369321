"""From per-turn examples to training rows: packing consecutive turns into one row
(``pack_examples``), the max length (``fit_rows``, ``truncate_row``), the split by pair
(``split_pairs``) and upweighting (``split_rows``: duplicated rows or a loss weight); and the
packing representation's readers (``row_loss_spans``, ``trained_tokens``). The representation
is described in :mod:`coop_dag.tito.build` and, in short, in ``PACKING_DOC`` (parquet metadata)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coop_dag.tito.config import TitoStats
from coop_dag.tito.errors import TitoError, TitoLengthError
from coop_dag.tito.examples import TurnExample
from coop_dag.tito.trajectories import Trajectory

PACKING_DOC = (
    "row ids = input_ids + output_ids; loss_spans = [[start, end), ...] over those ids (one "
    "per turn, in order; the last span is exactly the output_ids region); span_turns / "
    "span_actions = turn index / executed commands per span; loss only inside loss_spans"
)


@dataclass
class PackedRow:
    """One row while it is built: its ids and, per turn packed into it, the loss span, turn
    index, executed commands and source."""

    traj: Trajectory
    ids: list[int]
    spans: list[list[int]]
    turns: list[int]
    actions: list[int]
    sources: list[str]
    weight: int


def _starts_with(seq: Sequence[int], prefix: Sequence[int]) -> bool:
    return len(seq) >= len(prefix) and seq[: len(prefix)] == prefix


def pack_examples(
    examples: Sequence[TurnExample],
    weights: Sequence[int],
    *,
    pack: bool = True,
    max_length: int | None = None,
) -> list[PackedRow]:
    """Rows from per-turn examples (in trajectory order). With ``pack``, a turn whose prompt
    starts with the current row's ids exactly (same trajectory, weight and source, and the
    merged row within ``max_length``) joins that row as one more loss span."""
    rows: list[PackedRow] = []
    cur: PackedRow | None = None
    for ex, w in zip(examples, weights, strict=True):
        merged_len = len(ex.prompt_ids) + len(ex.output_ids)
        if (
            pack
            and cur is not None
            and cur.traj is ex.traj
            and cur.weight == w
            and cur.sources[-1] == ex.source
            and (max_length is None or merged_len <= max_length)
            and _starts_with(ex.prompt_ids, cur.ids)
        ):
            start = len(ex.prompt_ids)
            cur.ids = list(ex.prompt_ids) + list(ex.output_ids)
            cur.spans.append([start, start + len(ex.output_ids)])
            cur.turns.append(ex.turn_index)
            cur.actions.append(ex.n_actions)
            cur.sources.append(ex.source)
            continue
        start = len(ex.prompt_ids)
        cur = PackedRow(
            traj=ex.traj,
            ids=list(ex.prompt_ids) + list(ex.output_ids),
            spans=[[start, start + len(ex.output_ids)]],
            turns=[ex.turn_index],
            actions=[ex.n_actions],
            sources=[ex.source],
            weight=w,
        )
        rows.append(cur)
    return rows


def truncate_row(
    ids: list[int], spans: list[list[int]], max_length: int, mode: str
) -> tuple[list[int], list[list[int]], list[int]]:
    """``(ids, spans, kept span indices)`` after truncation to ``max_length``: ``left`` keeps
    the last ids, ``right`` the first; spans are shifted/clipped and empty ones dropped."""
    n = len(ids)
    if n <= max_length:
        return ids, spans, list(range(len(spans)))
    if mode == "left":
        cut = n - max_length
        kept = [(j, [max(s - cut, 0), e - cut]) for j, (s, e) in enumerate(spans) if e - cut > 0]
        ids = ids[cut:]
    elif mode == "right":
        kept = [(j, [s, min(e, max_length)]) for j, (s, e) in enumerate(spans) if s < max_length]
        ids = ids[:max_length]
    else:
        raise TitoError(f"unknown truncation mode {mode!r}")
    return ids, [s for _, s in kept], [j for j, _ in kept]


def split_pairs(pair_ids: Iterable[str], val_fraction: float = 0.1, seed: int = 0) -> set[str]:
    """The val pairs: pairs ranked by ``sha256(f"{seed}:{pair_id}")``, the first
    ``round(n * val_fraction)`` (at least 1 when ``val_fraction > 0`` and n >= 2; never all)."""
    uniq = sorted(set(pair_ids))
    n = len(uniq)
    if n < 2 or val_fraction <= 0:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    ranked = sorted(uniq, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return set(ranked[:n_val])


def row_dict(row: PackedRow, weight: float, upweight: int) -> dict:
    """The row as written to parquet (the columns of :func:`coop_dag.tito.parquet.tito_schema`)."""
    last = row.spans[-1][0]
    return {
        "input_ids": row.ids[:last],
        "output_ids": row.ids[last:],
        "traj_id": row.traj.traj_id,
        "pair_id": row.traj.pair_id,
        "repo": row.traj.repo,
        "task_id": row.traj.task_id,
        "agent_id": row.traj.agent_id,
        "turn_index": row.turns[0],
        "weight": float(weight),
        "upweight": int(upweight),
        "source": row.sources[0],
        "loss_spans": [list(s) for s in row.spans],
        "span_turns": list(row.turns),
        "span_actions": list(row.actions),
    }


def fit_rows(
    rows: Iterable[PackedRow], max_length: int | None, truncation: str, stats: TitoStats
) -> list[PackedRow]:
    """The rows within ``max_length`` (counting packed rows and merged turns on the way):
    a longer row raises TitoLengthError under ``truncation="error"``, else is truncated, and
    dropped when no trained token is left."""
    kept: list[PackedRow] = []
    for row in rows:
        if len(row.spans) > 1:
            stats.packed_rows += 1
            stats.turns_merged += len(row.spans) - 1
        if max_length is not None and len(row.ids) > max_length:
            if truncation == "error":
                raise TitoLengthError(
                    f"row of trajectory {row.traj.traj_id}, turn {row.turns[0]} has "
                    f"{len(row.ids)} tokens > max_length {max_length} (truncation=error)"
                )
            ids, spans, idx = truncate_row(row.ids, row.spans, max_length, truncation)
            setattr(stats, f"truncated_{truncation}", getattr(stats, f"truncated_{truncation}") + 1)
            if not spans:
                stats.dropped_truncated += 1
                continue
            row.ids, row.spans = ids, spans
            row.turns = [row.turns[j] for j in idx]
            row.actions = [row.actions[j] for j in idx]
            row.sources = [row.sources[j] for j in idx]
        kept.append(row)
    return kept


def split_rows(
    rows: Iterable[PackedRow], val_pairs: set[str], upweight_mode: str, stats: TitoStats
) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` row dicts: a row goes to val when its pair is a val pair; its weight
    becomes ``weight`` copies (``upweight_mode="duplicate"``) or its loss weight."""
    train: list[dict] = []
    val: list[dict] = []
    for row in rows:
        side = val if row.traj.pair_id in val_pairs else train
        if upweight_mode == "duplicate":
            for _ in range(row.weight):
                side.append(row_dict(row, 1.0, row.weight))
            stats.duplicate_rows_added += row.weight - 1
        else:
            side.append(row_dict(row, float(row.weight), row.weight))
    return train, val


def trained_tokens(row: dict) -> int:
    """How many of the row's tokens are trained (the sum of its loss spans)."""
    return sum(e - s for s, e in row_loss_spans(row))


def row_loss_spans(row: dict) -> list[tuple[int, int]]:
    """``[start, end)`` spans of trained tokens over ``input_ids + output_ids`` (the whole
    ``output_ids`` region when the row has no ``loss_spans``)."""
    spans = row.get("loss_spans")
    if spans is None or len(spans) == 0:
        n_in = len(row["input_ids"])
        return [(n_in, n_in + len(row["output_ids"]))]
    return [(int(s), int(e)) for s, e in spans]
