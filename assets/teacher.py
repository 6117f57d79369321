"""Stage 1: teacher rollouts on the training pairs, the teacher's own behaviour metrics (the
ceiling distillation is bounded by), and rejection sampling to the pairs that show it."""

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.partitions import VARIANTS, check_spec, variant_partitions
from assets.rollout_assets import RolloutResources, rollout_asset
from coop_dag.agent.rollouts import (
    RolloutErrors,
    limits_from,
    raise_on_errors,
    rollout_pairs,
    select_pairs,
)
from coop_dag.agent.teachers import make_teacher_factory, teacher_facts
from coop_dag.dataset.pool import require_train_pairs
from coop_dag.dataset.tasks import TaskError
from coop_dag.eval.lineage import content_version
from coop_dag.eval.metrics import score_pairs
from coop_dag.eval.runlogs import iter_pairs
from resources.lineage import LineageResource


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


@rollout_asset(group_name="teacher", code_version="1")
def teacher_rollouts(
    context: dg.AssetExecutionContext, task_pool: dict, resources: RolloutResources
) -> dg.Output[dict]:
    """Two teacher agents per training pair (train split only: never a validation or test
    repository), concurrently, messaging through Redis, with the steering prompt when the
    variant asks for it. Resumable: finished pairs are kept. Fails when there is no training
    pair, saying why. A ``served`` teacher's model is served by the serving resource (vLLM)
    for the duration."""
    dataset, rollout, serving, lineage = resources
    variant = VARIANTS[context.partition_key]
    try:
        pair_ids = require_train_pairs(task_pool)
    except TaskError as exc:
        raise dg.Failure(description=str(exc)) from None
    endpoint = None
    if variant.teacher["kind"] == "served":
        endpoint = serving.ensure(variant.teacher["model"], log=context.log.info)
    # fails here, before any rollout, on bad credentials
    make_model = make_teacher_factory(variant, endpoint)
    pairs = select_pairs(dataset.root, pair_ids, dataset.subset_name)
    run_dir = rollout.run_dir(variant.name, "teacher")
    context.log.info(f"teacher_rollouts[{variant.name}]: {len(pairs)} pairs into {run_dir}")
    summary = rollout_pairs(
        pairs,
        make_model,
        run_dir,
        steering=variant.steering,
        limits=limits_from(variant.rollout),
        model_name=variant.teacher.get("model", variant.teacher["kind"]),
        redis_url=rollout.redis,
        concurrency=rollout.workers(int(variant.rollout.get("concurrency", 2))),
        mirror_dir=dataset.mirror,
        allow_unsandboxed=rollout.allow_unsandboxed,
        sandbox=rollout.sandbox_backend,
        log=context.log.info,
    )
    try:  # an infrastructure error is not a teacher outcome: fail, rerun finishes only those
        raise_on_errors(summary)
    except RolloutErrors as exc:
        raise dg.Failure(
            description=str(exc), metadata={"errors": dg.MetadataValue.json(exc.errors)}
        ) from None
    stable = ("run_dir", "statuses", "pair_ids", "mean_steps", "both_passed_rate")
    summary["data_version"] = content_version({k: summary[k] for k in stable})
    facts = {
        **teacher_facts(variant),
        **({"teacher_endpoint": endpoint.api_base} if endpoint else {}),
        "validation_repos": task_pool["validation_repos"],
        "test_repos": task_pool["test_repos"],
        "held_out_repos": task_pool["test_repos"],  # older name of test_repos
        "dataset_dir": str(dataset.root),
    }
    summary["facts"] = facts
    lineage.record(context, summary["data_version"], facts=facts)
    context.add_output_metadata(
        {
            **{k: dg.MetadataValue.text(str(v)) for k, v in facts.items() if v is not None},
            "run_dir": dg.MetadataValue.path(summary["run_dir"]),
            "pairs_done": summary["n_pairs"] - summary["statuses"].get("missing", 0),
            "pairs_run_now": summary["ran_now"],
            "statuses": dg.MetadataValue.json(summary["statuses"]),
            "mean_steps": summary["mean_steps"],
            "both_passed_rate": summary["both_passed_rate"] or 0.0,
            "wall_time_s": summary["wall_time_s"],
        }
    )
    return dg.Output(summary, data_version=dg.DataVersion(summary["data_version"]))


def score_pair_ids(
    run_dir: str, pair_ids: list[str], warn: Callable[[str], None] | None = None
) -> dict:
    """Metrics (§6 rules) over exactly `pair_ids` of a run directory (it may hold other pairs
    too); `warn` gets each unreadable or malformed file (pass `context.log.warning`)."""
    wanted = set(pair_ids)
    return score_pairs([p for p in iter_pairs(Path(run_dir)) if p.pair_id in wanted], warn=warn)


def _interval(ci: list | None) -> str:
    return f"{_pct(ci[0])}–{_pct(ci[1])}" if ci else "–"


def metrics_table(s: dict) -> str:
    # .get: summaries materialised before edit_follow_through and the cluster bootstrap lack them
    return "| metric | rate | n | 95% CI (Wilson) | 95% CI (cluster) |\n|---|---|---|---|---|\n" + (
        "\n".join(
            f"| {m} | {_pct(s[f'{m}_rate'])} | {s.get(f'{m}_n', '–')} "
            f"| {_interval(s.get(f'{m}_ci95'))} | {_interval(s.get(f'{m}_cluster_ci95'))} |"
            for m in ("plan_first", "plan_content", "follow_through", "edit_follow_through")
            if f"{m}_rate" in s
        )
    )


@dg.asset(
    partitions_def=variant_partitions,
    group_name="teacher",
    code_version="2",  # §6 metric rules
    check_specs=[check_spec("teacher_follow_through_ceiling", "teacher_validation")],
)
def teacher_validation(
    context: dg.AssetExecutionContext, teacher_rollouts: dict, lineage: LineageResource
):
    """The three behaviour metrics on the teacher's own rollouts, plus CooperBench success:
    the ceiling distillation is bounded by."""
    metrics = score_pair_ids(
        teacher_rollouts["run_dir"], teacher_rollouts["pair_ids"], warn=context.log.warning
    )
    s = metrics["summary"]
    metrics["data_version"] = content_version(metrics["per_pair"])
    metrics["facts"] = teacher_rollouts.get("facts", {})
    lineage.record(
        context,
        metrics["data_version"],
        upstream={"teacher_rollouts": teacher_rollouts["data_version"]},
        facts=metrics["facts"],
        metrics=s,
    )
    yield dg.Output(
        metrics,
        data_version=dg.DataVersion(metrics["data_version"]),
        metadata={
            "n_pairs": s["n_pairs"],
            "plan_first_rate": s["plan_first_rate"],
            "plan_content_rate": s["plan_content_rate"],
            "follow_through_rate": s["follow_through_rate"],
            "edit_follow_through_rate": s["edit_follow_through_rate"],
            "both_passed_rate": s.get("both_passed_rate") or 0.0,
            "table": dg.MetadataValue.md(metrics_table(s)),
        },
    )
    # The student is bounded by the teacher (seed: Qwen3-8B 13 % -> student 0 %): warn early.
    rate = s["follow_through_rate"]
    yield dg.AssetCheckResult(
        check_name="teacher_follow_through_ceiling",
        passed=rate >= 0.6,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"follow_through_rate": rate},
        description=f"teacher follow_through {_pct(rate)} (the student is bounded by it)",
    )


def passes_all(row: dict) -> bool:
    agents = row.get("follow_through") or {}
    return bool(row["plan_first"] and row["plan_content"] and agents and all(agents.values()))


@dg.asset(
    partitions_def=variant_partitions,
    group_name="teacher",
    code_version="1",
    check_specs=[check_spec("some_pairs_survive", "rejection_sampled_pairs", blocking=True)],
)
def rejection_sampled_pairs(
    context: dg.AssetExecutionContext,
    teacher_rollouts: dict,
    teacher_validation: dict,
    lineage: LineageResource,
):
    """Pairs scoring 100/100/100 (and, if the variant sets `require_both_passed`, both_passed)."""
    variant = VARIANTS[context.partition_key]
    need_pass = bool(variant.raw.get("require_both_passed", False))
    kept = [
        r["pair_id"]
        for r in teacher_validation["per_pair"]
        if passes_all(r) and (not need_pass or (r.get("eval") or {}).get("both_passed"))
    ]
    total = len(teacher_validation["per_pair"])
    out = {
        "run_dir": teacher_rollouts["run_dir"],
        "pair_ids": kept,
        "of": total,
        "facts": teacher_rollouts.get("facts", {}),
    }
    out["data_version"] = content_version({"run": teacher_rollouts["data_version"], "kept": kept})
    lineage.record(
        context,
        out["data_version"],
        upstream={"teacher_validation": teacher_validation["data_version"]},
        facts={"require_both_passed": need_pass, "kept": len(kept)},
    )
    yield dg.Output(
        out,
        data_version=dg.DataVersion(out["data_version"]),
        metadata={
            "kept": len(kept),
            "of": total,
            "require_both_passed": need_pass,
            "keep_rate": round(len(kept) / total, 4) if total else 0.0,
        },
    )
    yield dg.AssetCheckResult(
        check_name="some_pairs_survive",
        passed=bool(kept),
        metadata={"kept": len(kept)},
        description=f"{len(kept)} of {total} pairs kept"
        if kept
        else "no teacher pair scored 100/100/100: nothing to distil",
    )
