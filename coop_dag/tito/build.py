"""TITO rows from rollouts: one training example per assistant turn of every rejection-sampled
trajectory, as ``{input_ids, output_ids}`` token ids in the student's tokenizer.

Two paths, chosen per turn (the seed's Tier 5, Phases A and B):

- **native** -- the turn carries ``extra.token_capture`` (the ids the inference engine saw and
  returned) *and* the teacher's tokenizer is the student's (the sha256s passed in are equal).
  ``output_ids`` are the captured output ids. ``input_ids`` are the turn's prompt rendered
  with the *default* prompt (the steering section stripped from the instance message with
  :func:`coop_dag.agent.prompts.strip_steering`) through the same chat template. Before any of a
  trajectory's rows is built, the renderer is checked against the engine: the turn chosen by
  ``drift_check`` is rendered *with* steering (as the teacher saw it) and must equal the
  captured ``prompt_token_ids`` id for id, else :class:`TemplateDriftError` names the
  trajectory, the turn and the first differing position -- training on misaligned tokens is
  never silent. By default (``native_prompt="splice"``) the default-prompt ids are then
  obtained without re-rendering every turn: the rendered head of the conversation (system +
  instance message, the only part the steering section touches) is swapped for its default
  rendering inside each captured prompt. The splice is verified against a full default
  re-render on the drift-checked turn, and a trajectory whose captured prompts do not start
  with the rendered head falls back to rendering every turn (counted).
- **re-tokenised** -- no capture, another tokenizer, or a templated/API teacher.
  ``input_ids`` = ``render_ids(messages[:k])`` (steering stripped, bash tool in ``tools``,
  generation prompt); ``output_ids`` = the student tokenizer's ids of
  :func:`coop_dag.tito.chat.assistant_target_text` (reasoning text, then each executed command as
  the Qwen inline XML tool call) plus the template's end-of-turn id. Native-eligible turns
  without ids fall back here and are counted.

Then, per row:

- **strip-think** (token level, ``strip_think``): an output that opens with ``<think>``, or an
  output that starts inside reasoning because the prompt already ends in an opened or empty
  think block (the Qwen3.5 shape), is sliced through the first ``</think>`` and the
  whitespace tokens after it. A bare ``</think>`` before any ``<tool_call>`` is sliced too
  (reasoning whose opening tag the template wrote); an output that opens a think block and
  never closes it is all reasoning and is dropped. Counted per shape.
- **upweight**: turns ``0 .. upweight_turns-1`` get factor ``upweight`` (default 12), realised
  as duplicated rows (``upweight_mode="duplicate"``, ``weight`` = 1.0) or as a per-row loss
  weight (``upweight_mode="weight"``, ``weight`` = factor). ``upweight`` records the factor.
- **packing** (``pack``, on by default): when turn k+1's prompt ids start with the current
  row's ids (turn k's prompt + output) exactly, and the turns have the same weight, the turn
  is merged into that row. Packing representation: a row's ids are ``input_ids +
  output_ids``; ``loss_spans`` lists ``[start, end)`` over those concatenated ids -- the
  trained tokens, one span per turn, in order; the last span is always exactly the
  ``output_ids`` region, so an unpacked row has ``loss_spans == [[len(input_ids),
  len(input_ids) + len(output_ids)]]`` and a consumer that ignores ``loss_spans`` trains on
  the last turn only (never on prompt tokens). ``span_turns`` / ``span_actions`` give each
  span's turn index and number of executed commands; ``turn_index`` is the first span's turn.
  Each span's context (the ids before it) is exactly that turn's unpacked ``input_ids``, so
  packed and unpacked data have the same loss targets.
- **max length** (``max_length``): packing never merges past it; a longer row is handled by
  ``truncation``: ``error`` raises, ``left`` keeps the last ``max_length`` ids, ``right`` the
  first (spans clipped; a row left with no trained token is dropped). Counted.
- **split** by pair (both agents of a pair, i.e. every trajectory of it, on one side):
  deterministic seeded-hash ranking, ``val_fraction`` (default 10 %) of the pairs to val.

The steps live in their own modules, in build order: ``trajectories`` (the input),
``examples`` (per-turn ids, both paths, strip-think), ``packing`` (packing, max length,
upweight, split), ``parquet`` (the files); ``tokens`` (tokenizers, strip-think at token level),
``config`` (``TitoConfig``, ``TitoStats``) and ``errors`` serve them all. This module runs them
in order (``build_tito``) and holds the result (``TitoResult``). Checks (``check_*`` in
``checks``) are pure functions returning lists of problems; the Dagster asset wraps them as
asset checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.tito.chat import chat_template_sha256, tokenizer_sha256
from coop_dag.tito.config import TitoConfig, TitoStats
from coop_dag.tito.errors import EmptyRolloutSetError
from coop_dag.tito.examples import SOURCES, ExampleBuilder
from coop_dag.tito.packing import (
    PACKING_DOC,
    PackedRow,
    fit_rows,
    pack_examples,
    split_pairs,
    split_rows,
    trained_tokens,
)
from coop_dag.tito.parquet import FORMAT_VERSION, write_parquet
from coop_dag.tito.tokens import TokenVocab
from coop_dag.tito.trajectories import Trajectory


@dataclass
class TitoResult:
    """The rows of a build, its counters and the metadata its parquet files carry."""

    train: list[dict]
    val: list[dict]
    stats: TitoStats
    metadata: dict

    @property
    def rows(self) -> list[dict]:
        return self.train + self.val

    def write(self, out_dir: str | os.PathLike, metadata: dict | None = None) -> dict[str, Path]:
        """``train.parquet`` and ``val.parquet`` (each written atomically) in ``out_dir``."""
        meta = {**self.metadata, **(metadata or {})}
        out = Path(out_dir)
        return {
            "train": write_parquet(
                self.train, out / "train.parquet", {**meta, "split_name": "train"}
            ),
            "val": write_parquet(self.val, out / "val.parquet", {**meta, "split_name": "val"}),
        }

    def rows_per_turn_index(self) -> dict[int, int]:
        """How many rows (train and val) start at each turn index, by turn index."""
        turns: dict[int, int] = {}
        for row in self.rows:
            turns[row["turn_index"]] = turns.get(row["turn_index"], 0) + 1
        return dict(sorted(turns.items()))

    def rows_by_source(self) -> dict[str, int]:
        """How many rows (train and val) each path built (``native``, ``retokenised``)."""
        rows = self.rows
        return {s: sum(1 for r in rows if r["source"] == s) for s in SOURCES}


def build_tito(
    trajectories: Iterable[Trajectory | dict],
    tokenizer: Any,
    config: TitoConfig | None = None,
    *,
    chat_template: str | None = None,
    student_tokenizer_sha256: str | None = None,
    teacher_tokenizer_sha256: str | None = None,
    tokenizer_name: str | None = None,
    variant: str = "",
) -> TitoResult:
    """TITO rows (train/val) from rejection-sampled trajectories.

    The native path is used only when ``teacher_tokenizer_sha256`` equals
    ``student_tokenizer_sha256`` (the latter defaults to :func:`coop_dag.tito.chat.tokenizer_sha256`
    of ``tokenizer``); an unknown teacher tokenizer means re-tokenise. Raises
    EmptyRolloutSetError when there is no trajectory or no row, TemplateDriftError on a
    renderer/engine mismatch, TitoLengthError on an over-long row under
    ``truncation="error"``.
    """
    cfg = config or TitoConfig()
    trajs = _trajectories(trajectories)
    student_sha = student_tokenizer_sha256 or tokenizer_sha256(tokenizer)
    native_ok = bool(teacher_tokenizer_sha256) and teacher_tokenizer_sha256 == student_sha
    stats = TitoStats(trajectories=len(trajs))
    builder = ExampleBuilder(tokenizer, cfg, chat_template, native_ok, stats)

    # every trajectory's examples first (a drift error wins over a length error)
    rows = fit_rows(_packed_rows(trajs, builder, cfg), cfg.max_length, cfg.truncation, stats)
    if not rows:
        raise EmptyRolloutSetError(
            f"no TITO row from {len(trajs)} trajectories (every turn skipped or dropped; "
            f"stats: {stats.as_dict()}); nothing written"
        )
    val_pairs = split_pairs((t.pair_id for t in trajs), cfg.val_fraction, cfg.split_seed)
    train, val = split_rows(rows, val_pairs, cfg.upweight_mode, stats)
    _count_split(stats, {t.pair_id for t in trajs}, val_pairs, train, val)
    metadata = _metadata(
        cfg,
        stats,
        variant=variant,
        tokenizer_name=tokenizer_name or str(getattr(tokenizer, "name_or_path", "")),
        student_sha=student_sha,
        teacher_sha=teacher_tokenizer_sha256,
        template_sha=chat_template_sha256(tokenizer, chat_template),
        vocab=builder.vocab,
        val_pairs=val_pairs,
        native_ok=native_ok,
    )
    return TitoResult(train, val, stats, metadata)


def _trajectories(trajectories: Iterable[Trajectory | dict]) -> list[Trajectory]:
    """The input as ``Trajectory`` objects; raises EmptyRolloutSetError when there is none."""
    trajs = [t if isinstance(t, Trajectory) else Trajectory.from_dict(t) for t in trajectories]
    if not trajs:
        raise EmptyRolloutSetError(
            "the rejection-sampled set is empty: no trajectory to build TITO rows from "
            "(nothing written)"
        )
    return trajs


def _packed_rows(
    trajs: list[Trajectory], builder: ExampleBuilder, cfg: TitoConfig
) -> list[PackedRow]:
    """Every trajectory's examples, weighted (turns before ``upweight_turns`` get
    ``upweight``) and packed into rows."""
    stats = builder.stats
    rows: list[PackedRow] = []
    for traj in trajs:
        examples = builder.examples(traj)
        if any(e.source == "native" for e in examples):
            stats.trajectories_native += 1
        weights = [cfg.upweight if e.turn_index < cfg.upweight_turns else 1 for e in examples]
        stats.upweighted_turns += sum(1 for w in weights if w > 1)
        rows.extend(pack_examples(examples, weights, pack=cfg.pack, max_length=cfg.max_length))
    return rows


def _count_split(
    stats: TitoStats,
    all_pairs: set[str],
    val_pairs: set[str],
    train: list[dict],
    val: list[dict],
) -> None:
    """Rows, pairs and tokens on each side of the split, into ``stats``."""
    stats.rows_train, stats.rows_val = len(train), len(val)
    stats.pairs_val = len(val_pairs)
    stats.pairs_train = len(all_pairs - val_pairs)
    stats.trained_tokens_train = sum(trained_tokens(r) for r in train)
    stats.total_tokens_train = sum(len(r["input_ids"]) + len(r["output_ids"]) for r in train)


def _metadata(
    cfg: TitoConfig,
    stats: TitoStats,
    *,
    variant: str,
    tokenizer_name: str,
    student_sha: str,
    teacher_sha: str | None,
    template_sha: str,
    vocab: TokenVocab,
    val_pairs: set[str],
    native_ok: bool,
) -> dict:
    """The build's metadata (the parquet files' ``coop_dag.tito`` JSON). Its keys and their
    order are part of the files' bytes, so of their data version."""
    return {
        "format": FORMAT_VERSION,
        "variant": variant,
        "tokenizer": {"name": tokenizer_name, "sha256": student_sha},
        "teacher_tokenizer_sha256": teacher_sha,
        "chat_template_sha256": template_sha,
        "template_kwargs": cfg.template_kwargs,
        "tools": [t.get("function", {}).get("name") for t in (cfg.tools or [])],
        "eot": {"token": vocab.eot_token, "id": vocab.eot_id},
        "strip": {"think": cfg.strip_think, "steering": cfg.strip_steering},
        "upweight": {
            "factor": cfg.upweight,
            "turns": cfg.upweight_turns,
            "mode": cfg.upweight_mode,
        },
        "packing": {"enabled": cfg.pack, "representation": PACKING_DOC},
        "max_length": cfg.max_length,
        "truncation": cfg.truncation,
        "split": {
            "by": "pair",
            "val_fraction": cfg.val_fraction,
            "seed": cfg.split_seed,
            "val_pairs": sorted(val_pairs),
        },
        "native_path": native_ok,
        "config": cfg.to_json(),
        "stats": stats.as_dict(),
    }


def build_tito_parquet(
    trajectories: Iterable[Trajectory | dict],
    tokenizer: Any,
    out_dir: str | os.PathLike,
    config: TitoConfig | None = None,
    *,
    metadata: dict | None = None,
    **kwargs: Any,
) -> tuple[TitoResult, dict[str, Path]]:
    """:func:`build_tito` then :meth:`TitoResult.write` (``train.parquet``, ``val.parquet``).
    Nothing is written (not even ``out_dir``) when the build raises."""
    result = build_tito(trajectories, tokenizer, config, **kwargs)
    return result, result.write(out_dir, metadata)
