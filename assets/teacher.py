"""Stage 1: teacher rollouts on the training pairs, the teacher's own behaviour metrics (the
ceiling distillation is bounded by), and rejection sampling to the pairs that show it."""

from pathlib import Path

import dagster as dg

from assets.partitions import VARIANTS, variant_partitions
from coop_dag.metrics import score_run
from coop_dag.rollouts import limits_from, rollout_pairs, select_pairs
from coop_dag.teachers import make_teacher_factory
from resources.dataset import DatasetResource
from resources.rollout import RolloutResource


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


@dg.asset(partitions_def=variant_partitions, group_name="teacher", code_version="1")
def teacher_rollouts(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
) -> dict:
    """Two teacher agents per training pair, concurrently, messaging through Redis, with the
    steering prompt when the variant asks for it. Resumable: finished pairs are kept."""
    variant = VARIANTS[context.partition_key]
    make_model = make_teacher_factory(variant)  # fails here, before any rollout, on bad creds
    pair_ids = [p["pair_id"] for p in task_pool["pairs"] if p["split"] == "train"]
    pairs = select_pairs(dataset.root, pair_ids, dataset.subset or None)
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
        concurrency=rollout.concurrency or int(variant.rollout.get("concurrency", 2)),
        log=context.log.info,
    )
    context.add_output_metadata(
        {
            "run_dir": dg.MetadataValue.path(summary["run_dir"]),
            "pairs_done": summary["n_pairs"] - summary["statuses"].get("missing", 0),
            "pairs_run_now": summary["ran_now"],
            "statuses": dg.MetadataValue.json(summary["statuses"]),
            "mean_steps": summary["mean_steps"],
            "both_passed_rate": summary["both_passed_rate"] or 0.0,
            "wall_time_s": summary["wall_time_s"],
            "teacher": dg.MetadataValue.json(
                {k: v for k, v in variant.teacher.items() if "key" not in k}
            ),
            "steering": variant.steering,
        }
    )
    return summary


@dg.asset(partitions_def=variant_partitions, group_name="teacher", code_version="1")
def teacher_validation(context: dg.AssetExecutionContext, teacher_rollouts: dict) -> dict:
    """The three behaviour metrics on the teacher's own rollouts, plus CooperBench success."""
    metrics = score_run(Path(teacher_rollouts["run_dir"]))
    wanted = set(teacher_rollouts["pair_ids"])
    metrics["per_pair"] = [r for r in metrics["per_pair"] if r["pair_id"] in wanted]
    s = metrics["summary"]
    context.add_output_metadata(
        {
            "n_pairs": s["n_pairs"],
            "plan_first_rate": s["plan_first_rate"],
            "plan_content_rate": s["plan_content_rate"],
            "follow_through_rate": s["follow_through_rate"],
            "both_passed_rate": s.get("both_passed_rate") or 0.0,
            "table": dg.MetadataValue.md(
                "| metric | rate | 95% CI |\n|---|---|---|\n"
                + "\n".join(
                    f"| {m} | {_pct(s[f'{m}_rate'])} | "
                    f"{_pct(s[f'{m}_ci95'][0])}–{_pct(s[f'{m}_ci95'][1])} |"
                    for m in ("plan_first", "plan_content", "follow_through")
                )
            ),
        }
    )
    return metrics


@dg.asset_check(asset=teacher_validation, blocking=False)
def teacher_follow_through_ceiling(teacher_validation: dict) -> dg.AssetCheckResult:
    """Warn when the teacher's follow-through is under the seed's 60 % bar: the student will be
    bounded by it (the seed's Qwen3-8B teacher: 13 % -> student 0 %)."""
    rate = teacher_validation["summary"]["follow_through_rate"]
    return dg.AssetCheckResult(
        passed=rate >= 0.6,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"follow_through_rate": rate},
        description=f"teacher follow_through {_pct(rate)} (student is bounded by it)",
    )


def passes_all(row: dict) -> bool:
    agents = row.get("follow_through") or {}
    return bool(row["plan_first"] and row["plan_content"] and agents and all(agents.values()))


@dg.asset(partitions_def=variant_partitions, group_name="teacher", code_version="1")
def rejection_sampled_pairs(
    context: dg.AssetExecutionContext, teacher_rollouts: dict, teacher_validation: dict
) -> dict:
    """Pairs scoring 100/100/100 (and, if the variant asks, `both_passed`)."""
    variant = VARIANTS[context.partition_key]
    need_pass = bool(variant.raw.get("require_both_passed", False))
    kept = [
        r["pair_id"]
        for r in teacher_validation["per_pair"]
        if passes_all(r) and (not need_pass or (r.get("eval") or {}).get("both_passed"))
    ]
    total = len(teacher_validation["per_pair"])
    context.add_output_metadata(
        {
            "kept": len(kept),
            "of": total,
            "require_both_passed": need_pass,
            "keep_rate": round(len(kept) / total, 4) if total else 0.0,
        }
    )
    return {"run_dir": teacher_rollouts["run_dir"], "pair_ids": kept, "of": total}


@dg.asset_check(asset=rejection_sampled_pairs, blocking=True)
def some_pairs_survive(rejection_sampled_pairs: dict) -> dg.AssetCheckResult:
    kept = len(rejection_sampled_pairs["pair_ids"])
    return dg.AssetCheckResult(
        passed=kept > 0,
        metadata={"kept": kept},
        description="no teacher pair scored 100/100/100; nothing to distil"
        if not kept
        else f"{kept} pairs kept",
    )
