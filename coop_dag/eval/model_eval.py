"""`coop-dag eval`: roll out any model or adapter on a dataset's pairs, and score it.

The model is one of

- an **adapter directory** (``adapter_config.json`` inside): served by vLLM on its base
  student (its ``lineage.json``'s ``student``, else ``--student``, else the variant's) under its
  content name ``student-<sha12>``, on a server attached to (``url``) or started the way the
  serving resource starts it (:class:`~coop_dag.serving.settings.ServeSettings`), stopped
  afterwards;
- a **student name** (configs/students.yaml): its untrained base model, served the same way;
- a **served model name** with ``url``: any model ``/v1/models`` lists there;
- otherwise a **litellm model string** (``openai/gpt-4o``, ``gemini/...``), called directly.

Pairs are rolled out exactly as ``student_rollouts`` does (``rollout_pairs``: the default coop
prompt, never steering, the variant's ``student_rollout`` limits and ``max_tokens``), into a
CooperBench-layout run directory (resumable: a rerun finishes only missing or errored pairs),
then scored with the §6 rules. The run directory gets ``eval_run.json`` (model, dataset,
subset, the pairs used, limits, facts), ``scores.json`` (the full metrics) and ``scores.md``
(the table :func:`score_table` prints).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_dag.config.profiles import resolve_profile
from coop_dag.dataset.config import DatasetConfig
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.tasks import Pair, split_pairs

SPLIT_CHOICES = ("test", "validation", "train", "all")
LogFn = Callable[[str], None]


class EvalError(ValueError):
    """A bad model, pair or split selection; the message names the value."""


def select_eval_pairs(
    config: DatasetConfig, *, split: str = "test", pair_ids: Sequence[str] = ()
) -> list[Pair]:
    """The pairs to evaluate: `pair_ids` exactly (in that order), else every pair of `split`
    (``all``: every pair of the dataset or subset)."""
    pairs = discover_pairs(config.root, subset=config.subset, mirror_dir=config.mirror_dir)
    if pair_ids:
        by_id = {p.pair_id: p for p in pairs}
        missing = [pid for pid in pair_ids if pid not in by_id]
        if missing:
            where = f"{config.root}" + (f" (subset {config.subset})" if config.subset else "")
            raise EvalError(
                f"--pairs: {', '.join(missing[:5])} not in {where}; pair ids look like "
                f"{pairs[0].pair_id if pairs else '<repo>/<task>/f<a>_f<b>'}"
            )
        return [by_id[pid] for pid in dict.fromkeys(pair_ids)]
    if split not in SPLIT_CHOICES:
        raise EvalError(f"--split {split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    if split == "all":
        return pairs
    chosen = split_pairs(pairs, config.split)[split]
    if not chosen:
        raise EvalError(
            f"no {split} pairs in {config.root}: its {split} repositories are "
            f"{getattr(config.split, split, None) or 'not set'}; set them (--test / "
            "COOP_DAG_TEST_REPOS, --validation / COOP_DAG_VALIDATION_REPOS), or choose "
            "--split all or --pairs"
        )
    return chosen


@dataclass
class EvalRun:
    """What `evaluate_model` did: the rollout summary, the scores and the provenance."""

    run_dir: Path
    model_kind: str
    model_name: str
    rollout: dict
    scores: dict
    facts: dict = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        return self.scores["summary"]


def _is_adapter(model: str) -> bool:
    return (Path(model).expanduser() / "adapter_config.json").is_file()


def _student_or_none(name: str):
    from coop_dag.training.students import StudentError, get_student

    try:
        return get_student(name)
    except (StudentError, FileNotFoundError, KeyError):
        return None


@dataclass
class _Model:
    """The chat model every agent of an eval run shares, what it is and how it is reached."""

    kind: str  # adapter / base / served / litellm
    name: str
    chat: Any
    facts: dict[str, Any]


@dataclass
class _Server:
    """How an eval run reaches vLLM: the serve settings (`serving.settings.ServeSettings`), the
    state directory, the leases the run holds (released when it ends) and the log."""

    serve: Any
    state_dir: str | os.PathLike
    leases: ExitStack
    log: LogFn

    def hold(self, port: int | None) -> None:
        """Release the lease on the server at `port` (if any) when the run ends."""
        from coop_dag.serving.leases import release_server

        if port is not None:
            self.leases.callback(release_server, self.state_dir, port)


def _adapter_model(
    model: str, student: str | None, variant: Any, server: _Server, max_tokens: int
) -> _Model:
    """An adapter directory, served on its base student as student_rollouts serves it."""
    from coop_dag.training.adapters import (
        AdapterError,
        adapter_name,
        read_lineage,
        validate_adapter,
    )

    path = str(Path(model).expanduser().resolve())
    try:
        validate_adapter(path)
        lineage = read_lineage(path, required=False)
    except AdapterError as exc:
        raise EvalError(f"adapter {path}: {exc}") from None
    base = student or lineage.get("student") or variant.student
    # as student_rollouts serves it: merged on the CPU, a LoRA elsewhere
    endpoint, served_as, lease_port = server.serve.ensure_adapter(
        base, path, server.state_dir, log=server.log
    )
    server.hold(lease_port)
    name = adapter_name(path)
    facts = {
        "adapter_dir": path,
        "adapter_name": name,
        "adapter_served_as": served_as,
        "student": base,
        "adapter_lineage": lineage,
        "endpoint": endpoint.api_base,
    }
    return _Model("adapter", name, endpoint.chat_model(name, max_tokens=max_tokens), facts)


def _base_model(model: str, server: _Server, max_tokens: int) -> _Model:
    """A student's untrained base model, served the way the serving resource serves it."""
    endpoint, leased = server.serve.ensure(model, server.state_dir, log=server.log)
    server.hold(server.serve.port if leased else None)
    name = endpoint.base_model_id
    facts = {"student": model, "base_model": name, "endpoint": endpoint.api_base}
    return _Model("base", name, endpoint.chat_model(name, max_tokens=max_tokens), facts)


def _served_model(model: str, attach_url: str, max_tokens: int) -> _Model:
    """A model the vLLM server at `attach_url` lists."""
    from coop_dag.agent.models import LiteLLMChatModel
    from coop_dag.serving.vllm import VllmEngine, VllmError

    engine = VllmEngine(attach_url)
    try:
        ids = [str(c.get("id")) for c in engine.list_models()]
    except VllmError as exc:
        raise EvalError(f"--url {attach_url}: {exc}") from None
    if model not in ids:
        raise EvalError(
            f"{model!r} is not served at {attach_url} (it serves {', '.join(ids)}) and is "
            "not an adapter directory"
        )
    chat = LiteLLMChatModel(
        f"openai/{model}",
        api_base=engine.api_base,
        capture_token_ids=True,
        max_tokens=max_tokens,
    )
    return _Model("served", model, chat, {"served_model": model, "endpoint": engine.api_base})


def _litellm_model(model: str, api_key_env: str | None, max_tokens: int) -> _Model:
    """A litellm model string (provider/model), called directly."""
    from coop_dag.agent.models import LiteLLMChatModel

    if "/" not in model:
        raise EvalError(
            f"{model!r} is not an adapter directory, a student of configs/students.yaml "
            "nor a litellm model string (provider/model, e.g. openai/gpt-4o); a model "
            "served by vLLM needs --url"
        )
    chat = LiteLLMChatModel(model, api_key_env=api_key_env, max_tokens=max_tokens)
    return _Model("litellm", model, chat, {"litellm_model": model})


def evaluate_model(
    model: str,
    pairs: list[Pair],
    run_dir: str | os.PathLike,
    *,
    variant: Any,
    serve: Any,
    state_dir: str | os.PathLike,
    dataset: DatasetConfig,
    student: str | None = None,
    redis_url: str | None = None,
    concurrency: int | None = None,
    allow_unsandboxed: bool = False,
    sandbox: str = "",
    api_key_env: str | None = None,
    log: LogFn = print,
) -> EvalRun:
    """Roll `model` out on `pairs` into `run_dir` and score it (see the module docstring).
    `variant`: a :class:`coop_dag.config.variants.Variant` (its ``student_rollout`` limits);
    `serve`: a `serving.settings.ServeSettings`. An infrastructure error in any pair
    raises `agent.rollouts.RolloutErrors` after the run directory is written (a rerun
    finishes only those pairs). A server this started or leased is released afterwards."""
    from coop_dag.agent.rollouts import limits_from, raise_on_errors, rollout_pairs
    from coop_dag.serving.errors import ServingError

    if not pairs:
        raise EvalError("no pairs to evaluate")
    backend = sandbox or resolve_profile().sandbox  # as the rollout resource chooses it
    settings = dict(variant.student_rollout)
    max_tokens = int(settings.get("max_tokens", 320))
    run_dir = Path(run_dir)
    attach_url = serve.server_choice().url  # --url, or COOP_DAG_VLLM_URL
    server = _Server(serve, state_dir, ExitStack(), log)
    try:
        if _is_adapter(model):
            chosen = _adapter_model(model, student, variant, server, max_tokens)
        elif _student_or_none(model) is not None:
            chosen = _base_model(model, server, max_tokens)
        elif attach_url:
            chosen = _served_model(model, attach_url, max_tokens)
        else:
            chosen = _litellm_model(model, api_key_env, max_tokens)
        log(f"coop-dag eval: {chosen.kind} {chosen.name} on {len(pairs)} pairs -> {run_dir}")
        rollout = rollout_pairs(
            pairs,
            lambda pair, feature, agent_id, partner_id: chosen.chat,
            run_dir,
            steering=False,  # evaluated under the prompt a student actually sees
            limits=limits_from(settings),
            model_name=chosen.name,
            redis_url=redis_url,
            concurrency=concurrency or int(settings.get("concurrency", 2)),
            mirror_dir=dataset.mirror_dir,
            sandbox=backend,
            allow_unsandboxed=allow_unsandboxed,
            log=log,
        )
    except ServingError as exc:
        raise EvalError(f"serving {model}: {exc}") from None
    finally:
        server.leases.close()  # where the server leases taken above are released
    kind, name, facts = chosen.kind, chosen.name, {"variant": variant.name, **chosen.facts}
    provenance = {
        "model": model,
        "model_kind": kind,
        "model_name": name,
        "dataset": str(dataset.root),
        "subset": dataset.subset,
        "mirror_dir": str(dataset.mirror_dir) if dataset.mirror_dir else None,
        "pair_ids": [p.pair_id for p in pairs],
        "limits": settings,
        "steering": False,
        "sandbox": backend,
        "facts": facts,
        "rollout": {k: v for k, v in rollout.items() if k != "pair_ids"},
    }
    (run_dir / "eval_run.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    raise_on_errors(rollout)
    scores = score_run_pairs(run_dir, [p.pair_id for p in pairs])
    (run_dir / "scores.json").write_text(json.dumps(scores, indent=2, default=str) + "\n")
    (run_dir / "scores.md").write_text(score_table(scores["summary"], title=name) + "\n")
    return EvalRun(run_dir, kind, name, rollout, scores, facts)


def score_run_pairs(run_dir: str | os.PathLike, pair_ids: Sequence[str]) -> dict:
    """§6 metrics over exactly `pair_ids` of a run directory (it may hold other pairs)."""
    from coop_dag.eval.metrics import score_pairs
    from coop_dag.eval.runlogs import iter_pairs

    wanted = set(pair_ids)
    return score_pairs([p for p in iter_pairs(Path(run_dir)) if p.pair_id in wanted])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _interval(ci: Sequence[float] | None) -> str:
    return f"{_pct(ci[0])}–{_pct(ci[1])}" if ci else "–"


def score_table(s: dict, *, title: str | None = None) -> str:
    """The score table: the behaviour metrics and CooperBench success with n and intervals,
    and the pairs whose evaluation failed (counted apart, never in a rate)."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| metric | rate | n | 95% CI (Wilson) | 95% CI (cluster) |",
        "|---|---|---|---|---|",
    ]
    for m in ("plan_first", "plan_content", "follow_through", "edit_follow_through"):
        if f"{m}_rate" in s:
            lines.append(
                f"| {m} | {_pct(s[f'{m}_rate'])} | {s.get(f'{m}_n', '–')} "
                f"| {_interval(s.get(f'{m}_ci95'))} | {_interval(s.get(f'{m}_cluster_ci95'))} |"
            )
    lines.append(
        f"| both_passed | {_pct(s.get('both_passed_rate'))} | {s.get('n_evaluated', 0)} "
        f"| {_interval(s.get('both_passed_ci95'))} | – |"
    )
    lines.append(
        f"| merge_clean | {_pct(s.get('merge_clean_rate'))} | {s.get('n_merge_evaluated', 0)} "
        f"| {_interval(s.get('merge_clean_ci95'))} | – |"
    )
    lines.append("")
    lines.append(
        f"{s.get('n_pairs', 0)} pairs scored; {s.get('n_eval_errors', 0)} evaluation errors "
        f"(not in any rate); {s.get('n_errors', 0)} unreadable logs"
    )
    for pid, cause in (s.get("eval_error_pairs") or {}).items():
        lines.append(f"- eval error {pid}: {cause}")
    return "\n".join(lines)
