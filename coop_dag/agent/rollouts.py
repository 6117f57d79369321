"""Roll out a model over many feature pairs: the shared driver of teacher and student rollouts."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from coop_dag.agent.episode import (
    EpisodeSettings,
    ModelFactory,
    pair_dir,
    run_pairs,
    sandbox_factory,
)
from coop_dag.agent.loop import AgentLimits
from coop_dag.agent.redis_server import RedisLink
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.tasks import Pair


class RolloutErrors(RuntimeError):
    """Pairs whose rollout ended on an infrastructure fault (model endpoint, Redis, sandbox,
    missing task files): errors, not outcomes. Behavioural failures of an agent (format
    errors, step or context limits) are scored outcomes and never raise this. The pairs'
    completed work stays on disk; a rerun re-runs only the errored pairs."""

    def __init__(self, errors: dict[str, str], n_pairs: int):
        self.errors = errors
        shown = "; ".join(f"{pid}: {cause}" for pid, cause in list(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(
            f"{len(errors)} of {n_pairs} pairs ended on an infrastructure error, so none is "
            f"scored; rerun to finish only them. {shown}{more}"
        )


def raise_on_errors(summary: dict) -> None:
    """:class:`RolloutErrors` when any pair of ``summary`` (from :func:`rollout_pairs`) is an
    error or missing."""
    errors = dict(summary.get("errors") or {})
    for pid in summary.get("missing") or []:
        errors.setdefault(pid, "no result (the rollout did not finish)")
    if errors:
        raise RolloutErrors(errors, int(summary.get("n_pairs", len(errors))))


def select_pairs(dataset_dir: Path, pair_ids: list[str], subset: str | None = None) -> list[Pair]:
    """The `Pair` objects for `pair_ids` (as listed by `task_pool`), in that order."""
    by_id = {p.pair_id: p for p in discover_pairs(dataset_dir, subset=subset)}
    missing = [pid for pid in pair_ids if pid not in by_id]
    if missing:
        raise ValueError(f"pairs not found in {dataset_dir}: {', '.join(missing[:5])}")
    return [by_id[pid] for pid in pair_ids]


def limits_from(rollout: dict) -> AgentLimits:
    return AgentLimits(
        max_steps=int(rollout.get("max_steps", 30)),
        max_context_tokens=rollout.get("max_context_tokens"),
        command_timeout=float(rollout.get("command_timeout", 60)),
        wait_timeout=float(rollout.get("wait_timeout", 60)),
        max_format_errors=int(rollout.get("max_format_errors", 3)),
    )


def rollout_pairs(
    pairs: list[Pair],
    make_model: ModelFactory,
    run_dir: Path,
    *,
    steering: bool,
    limits: AgentLimits,
    model_name: str,
    redis_url: str | None = None,
    concurrency: int = 2,
    mirror_dir: Path | None = None,
    allow_unsandboxed: bool = False,
    sandbox: str = "local",
    log: Callable[[str], None] = print,
) -> dict:
    """Run every missing pair (resumable) and summarise the whole run directory. Agents run in
    the `sandbox` backend (local: bubblewrap; docker: CooperBench's task images), checked
    before the first pair starts (with docker, a real task's tests run in its image too:
    `coop_dag.eval.evaluate.evaluate_pair`); they message through `redis_url`, or an embedded server
    (:class:`coop_dag.agent.redis_server.RedisLink`: checked before each pair, restarted when the
    embedded one dies, :class:`~coop_dag.agent.redis_server.RedisGone` when a configured one is
    gone)."""
    started = time.time()
    make_sandbox = sandbox_factory(sandbox)  # fails here, before any pair, without Docker
    settings = EpisodeSettings(
        run_dir=Path(run_dir),
        steering=steering,
        limits=limits,
        model_name=model_name,
        mirror_dir=mirror_dir,
        allow_unsandboxed=allow_unsandboxed,
        eval_backend=sandbox,  # docker: a real task's tests run in its image, too
    )

    def progress(done: int, total: int, pair: Pair, result: dict) -> None:
        log(f"[{done}/{total}] {pair.pair_id}: {result['status']} ({result['total_steps']} steps)")

    # checked before every pair: an embedded server that died is restarted for the remaining
    # pairs; a configured one that is gone stops the run at once (RedisGone, naming it)
    with RedisLink(redis_url, log=log) as link:
        todo = run_pairs(
            pairs,
            make_model,
            link.client,
            settings,
            concurrency=concurrency,
            make_sandbox=make_sandbox,
            on_progress=progress,
        )
    return summarise_run(pairs, Path(run_dir)) | {
        "ran_now": len(todo),
        "wall_time_s": round(time.time() - started, 1),
        "redis_restarts": list(link.restarts),
    }


def summarise_run(pairs: list[Pair], run_dir: Path) -> dict:
    import json

    statuses: Counter[str] = Counter()
    steps: list[int] = []
    errors: dict[str, str] = {}
    missing: list[str] = []
    both = n_eval = 0
    for pair in pairs:
        d = pair_dir(run_dir, pair)
        result_file = d / "result.json"
        if not result_file.is_file():
            statuses["missing"] += 1
            missing.append(pair.pair_id)
            continue
        result = json.loads(result_file.read_text())
        statuses[result["status"]] += 1
        if result["status"] == "Error":
            errors[pair.pair_id] = str(result.get("error") or "unknown error")[:300]
        steps.extend(a.get("steps", 0) for a in result.get("agents", {}).values())
        if (d / "eval.json").is_file():
            n_eval += 1
            both += bool(json.loads((d / "eval.json").read_text()).get("both_passed"))
    return {
        "run_dir": str(run_dir),
        "n_pairs": len(pairs),
        "statuses": dict(statuses),
        "mean_steps": round(statistics.mean(steps), 2) if steps else 0.0,
        "both_passed_rate": round(both / n_eval, 4) if n_eval else None,
        "pair_ids": [p.pair_id for p in pairs],
        "errors": errors,
        "missing": missing,
    }
