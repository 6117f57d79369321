"""Checks on built TITO rows: pure functions returning lists of problems (the Dagster asset wraps
them as asset checks; ``run_checks`` runs them all by name). Rows are dicts or a pyarrow table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from coop_dag.agent.actions import parse_actions
from coop_dag.agent.prompts import steering_section
from coop_dag.tito.packing import row_loss_spans
from coop_dag.tito.tokens import THINK_CLOSE, THINK_OPEN, single_token_id


def _rows(rows: Any) -> list[dict]:
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    return list(rows)


def _distinct(rows: Any) -> list[dict]:
    """Rows with exact duplicates (upweight copies) removed: decode-heavy checks run once per
    distinct row."""
    seen: set[int] = set()
    out = []
    for row in _rows(rows):
        key = hash(
            (
                tuple(row["input_ids"]),
                tuple(row["output_ids"]),
                str(row.get("loss_spans")),
                str(row.get("span_actions")),
                row.get("traj_id"),
                row.get("turn_index"),
            )
        )
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _where(row: dict) -> str:
    return f"{row.get('traj_id')} turn {row.get('turn_index')}"


def _ids(row: dict) -> list[int]:
    return list(row["input_ids"]) + list(row["output_ids"])


def check_rows_decode(rows: Any, tokenizer: Any) -> list[str]:
    """Every row: ids within the vocabulary, input and output decode, a non-empty output,
    loss spans in order, inside the row, the last one exactly the output region."""
    problems = []
    vocab_size = len(tokenizer)
    for row in _distinct(rows):
        ids = _ids(row)
        if not row["output_ids"]:
            problems.append(f"{_where(row)}: empty output_ids")
            continue
        bad = [i for i in ids if not 0 <= int(i) < vocab_size]
        if bad:
            problems.append(
                f"{_where(row)}: ids outside the vocabulary (size {vocab_size}): {bad[:5]}"
            )
            continue
        try:
            tokenizer.decode(row["input_ids"])
            tokenizer.decode(row["output_ids"])
        except Exception as err:  # noqa: BLE001 - any decode failure is the finding
            problems.append(f"{_where(row)}: does not decode ({type(err).__name__}: {err})")
            continue
        spans = row_loss_spans(row)
        prev = 0
        for s, e in spans:
            if not prev <= s < e <= len(ids):
                problems.append(f"{_where(row)}: bad loss span [{s}, {e}) (row has {len(ids)} ids)")
                break
            prev = e
        else:
            if spans[-1] != (len(row["input_ids"]), len(ids)):
                problems.append(
                    f"{_where(row)}: last loss span {spans[-1]} is not the output region"
                )
    return problems


def steering_markers(section: str | None = None) -> list[str]:
    """Texts whose presence in a row means steering leaked: the whole section, its heading
    line, and the heading's words without the markdown marks (a re-rendering may drop them)."""
    section = (section if section is not None else steering_section()).strip()
    heading = section.splitlines()[0].strip() if section else ""
    bare = heading.lstrip("#").strip().strip("*_").strip()
    return [m for m in dict.fromkeys((section, heading, bare)) if m]


def check_no_steering(rows: Any, tokenizer: Any, section: str | None = None) -> list[str]:
    """No row's ids contain the steering section, its heading line or the heading's words."""
    markers = steering_markers(section)
    problems = []
    for row in _distinct(rows):
        text = tokenizer.decode(_ids(row))
        hit = next((m for m in markers if m in text), None)
        if hit:
            problems.append(f"{_where(row)}: steering section in the prompt ({hit[:60]!r})")
    return problems


def check_no_repos(rows: Any, repos: Iterable[str]) -> list[str]:
    """No row comes from one of `repos` (the validation and test repositories: training on
    them would leak what the probe and the held-out rollouts measure)."""
    excluded = set(repos)
    hits: dict[str, list[str]] = {}
    for row in _rows(rows):
        repo = row.get("repo")
        if repo in excluded:
            hits.setdefault(repo, []).append(_where(row))
    return [
        f"{len(where)} row(s) from {repo}, which is a validation or test repository "
        f"(first: {where[0]})"
        for repo, where in sorted(hits.items())
    ]


def check_no_think(rows: Any, tokenizer: Any) -> list[str]:
    """No trained span holds a ``<think>``/``</think>`` token (or text)."""
    think_ids = {
        i
        for i in (single_token_id(tokenizer, THINK_OPEN), single_token_id(tokenizer, THINK_CLOSE))
        if i is not None
    }
    problems = []
    for row in _distinct(rows):
        ids = _ids(row)
        for s, e in row_loss_spans(row):
            span = ids[s:e]
            if think_ids.intersection(span) or any(
                t in tokenizer.decode(span) for t in (THINK_OPEN, THINK_CLOSE)
            ):
                problems.append(f"{_where(row)}: think token in the output span [{s}, {e})")
                break
    return problems


def check_ends_with_eot(rows: Any, eot_id: int) -> list[str]:
    """Every trained span (every turn's output) ends with the end-of-turn token."""
    problems = []
    for row in _rows(rows):
        ids = _ids(row)
        for s, e in row_loss_spans(row):
            if not 0 <= s < e <= len(ids) or ids[e - 1] != eot_id:
                problems.append(
                    f"{_where(row)}: output span [{s}, {e}) does not end with id {eot_id}"
                )
                break
    return problems


def check_tool_call_form(rows: Any, tokenizer: Any) -> list[str]:
    """Every turn that executed a command carries a parseable tool call (Qwen inline XML or
    hermes JSON) in its output -- not a markdown block, not narration."""
    problems = []
    for row in _distinct(rows):
        ids = _ids(row)
        spans = row_loss_spans(row)
        actions = list(row.get("span_actions") or [])
        turns = list(row.get("span_turns") or [row.get("turn_index")] * len(spans))
        for j, (s, e) in enumerate(spans):
            if j < len(actions) and actions[j] > 0:
                text = tokenizer.decode(ids[s:e], skip_special_tokens=False)
                if not parse_actions(text, None):
                    turn = turns[j] if j < len(turns) else "?"
                    problems.append(
                        f"{row.get('traj_id')} turn {turn}: executed {actions[j]} command(s) "
                        "but its output has no tool call"
                    )
    return problems


def check_split_disjoint(train_rows: Any, val_rows: Any) -> list[str]:
    """No trajectory (and no pair) on both sides of the split."""
    train, val = _rows(train_rows), _rows(val_rows)
    problems = []
    for key in ("traj_id", "pair_id"):
        both = {r.get(key) for r in train} & {r.get(key) for r in val}
        both.discard(None)
        for item in sorted(both):
            problems.append(f"{key} {item} is in both train and val")
    return problems


def run_checks(
    train_rows: Any,
    val_rows: Any,
    tokenizer: Any,
    eot_id: int,
    section: str | None = None,
    excluded_repos: Iterable[str] = (),
) -> dict[str, list[str]]:
    """All checks by name (what the Dagster asset turns into asset checks). `excluded_repos`:
    the validation and test repositories no row may come from."""
    rows = _rows(train_rows) + _rows(val_rows)
    return {
        "rows_decode": check_rows_decode(rows, tokenizer),
        "no_steering_in_inputs": check_no_steering(rows, tokenizer, section),
        "no_validation_or_test_repos": check_no_repos(rows, excluded_repos),
        "no_think_in_outputs": check_no_think(rows, tokenizer),
        "outputs_end_with_eot": check_ends_with_eot(rows, eot_id),
        "actions_have_tool_call_form": check_tool_call_form(rows, tokenizer),
        "split_disjoint": check_split_disjoint(train_rows, val_rows),
    }


def evaluation_repos(held_out: Iterable[str], upstream_facts: Mapping[str, Any]) -> set[str]:
    """The repositories no training row may come from: the held-out repositories as
    configured now, and the validation, test and held-out ones recorded in the upstream
    lineage facts when the rollouts ran."""
    return {
        *held_out,
        *upstream_facts.get("validation_repos", ()),
        *upstream_facts.get("test_repos", ()),
        *upstream_facts.get("held_out_repos", ()),
    }
