"""Stage 4: the student on repositories it never saw, the untrained base beside it, and the
report that answers the research question — did plan-first transfer, and how far is the
student from its teacher's ceiling."""

import base64
from pathlib import Path
from typing import Any

import dagster as dg

from assets.partitions import GPU_POOL, VARIANTS, check_spec, variant_partitions
from assets.rollout_assets import RolloutResources, rollout_asset
from assets.teacher import metrics_table, score_pair_ids
from coop_dag.agent.models import ChatModel
from coop_dag.agent.rollouts import (
    RolloutErrors,
    limits_from,
    raise_on_errors,
    rollout_pairs,
    select_pairs,
)
from coop_dag.config.variants import Variant
from coop_dag.dataset.pool import require_pairs
from coop_dag.dataset.tasks import TaskError
from coop_dag.eval.lineage import content_version
from coop_dag.eval.report import THRESHOLDS, report_markdown, report_plot, report_rows, seed_groups
from coop_dag.eval.stats import paired_deltas
from coop_dag.training.students import get_student
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource
from resources.serving import ServingResource


def _held_out(task_pool: dict) -> list[str]:
    """The test split's pairs: the only place test repositories are ever rolled out. None is
    a failure saying why, not an empty evaluation."""
    try:
        return require_pairs(task_pool, "test")
    except TaskError as exc:
        raise dg.Failure(description=str(exc)) from None


def bar_check_specs(asset: str, partitions_def: dg.PartitionsDefinition) -> list:
    """The seed's three bars as checks of `asset`, partitioned like it: each partition's
    result is that adapter's."""
    return [
        check_spec(
            f"{m}_meets_seed_bar",
            asset,
            partitions_def,
            description=f"{m} >= {THRESHOLDS[m]:.0%} (the seed's threshold)",
        )
        for m in THRESHOLDS
    ]


def _rollout_source(dataset: DatasetResource, pairs: list) -> dict:
    """What the rollouts actually ran on (lineage facts): this run's dataset and subset, and
    the pairs, not whatever dataset trained the adapter."""
    return {
        "dataset": str(dataset.root),
        "subset": dataset.subset_name,
        "pair_ids": [p.pair_id for p in pairs],
    }


def _metric_metadata(summary: dict) -> dict:
    return {
        "n_pairs": summary["n_pairs"],
        "plan_first_rate": summary["plan_first_rate"],
        "plan_content_rate": summary["plan_content_rate"],
        "follow_through_rate": summary["follow_through_rate"],
        "edit_follow_through_rate": summary.get("edit_follow_through_rate", 0.0),
        "both_passed_rate": summary.get("both_passed_rate") or 0.0,
        "table": dg.MetadataValue.md(metrics_table(summary)),
    }


def _roll_out(
    context, model, pairs, run_dir, variant, rollout, dataset, name, *, steering: bool = False
):
    """The pairs rolled out under the variant's held-out limits (the one runtime of student,
    base and controls); ``model``: a ChatModel shared by every agent, or an episode
    ModelFactory. An infrastructure error in any pair fails the asset (naming the pairs and
    causes) instead of becoming a score: a rerun finishes only those pairs."""
    settings = variant.student_rollout
    factory = model if not isinstance(model, ChatModel) else (lambda *_: model)
    summary = rollout_pairs(
        pairs,
        factory,
        run_dir,
        # the student is evaluated under the prompt it will actually see; only the
        # base + steering control sets this
        steering=steering,
        limits=limits_from(settings),
        model_name=name,
        redis_url=rollout.redis,
        concurrency=rollout.workers(int(settings.get("concurrency", 2))),
        mirror_dir=dataset.mirror,
        allow_unsandboxed=rollout.allow_unsandboxed,
        sandbox=rollout.sandbox_backend,
        log=context.log.info,
    )
    try:
        raise_on_errors(summary)
    except RolloutErrors as exc:
        raise dg.Failure(
            description=str(exc), metadata={"errors": dg.MetadataValue.json(exc.errors)}
        ) from None
    return summary


def scored_output(
    context: dg.AssetExecutionContext,
    summary: dict,
    lineage: LineageResource,
    facts: dict,
    run_dir: Path,
) -> dg.Output[dict]:
    """The §6 metrics of a run's rolled-out pairs (`summary`: a `_roll_out` summary),
    recorded in the lineage store with `facts`, as an output with their metadata; shared by
    the base and the controls."""
    metrics = score_pair_ids(summary["run_dir"], summary["pair_ids"], warn=context.log.warning)
    metrics["data_version"] = content_version(metrics["per_pair"])
    lineage.record(context, metrics["data_version"], facts=facts, metrics=metrics["summary"])
    return dg.Output(
        metrics,
        data_version=dg.DataVersion(metrics["data_version"]),
        metadata={
            **_metric_metadata(metrics["summary"]),
            "run_dir": dg.MetadataValue.path(str(run_dir)),
        },
    )


def roll_out_base(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    resources: RolloutResources,
    *,
    subdir: str,
    steering: bool = False,
) -> tuple[dict, list, Any, Path]:
    """The variant's untrained base student, served like the student, on the held-out pairs,
    into ``<rollout root>/<subdir>/<student>`` (kept per student, so variants sharing a
    student share them): (summary, pairs, endpoint, run_dir). Shared by base_student_metrics
    and base_steering_metrics."""
    variant = VARIANTS[context.partition_key]
    endpoint = resources.serving.ensure(variant.student, log=context.log.info)
    pairs = select_pairs(
        resources.dataset.root, _held_out(task_pool), resources.dataset.subset_name
    )
    run_dir = resources.rollout.root / subdir / variant.student
    model = endpoint.chat_model(
        endpoint.base_model_id, max_tokens=int(variant.student_rollout.get("max_tokens", 320))
    )
    summary = _roll_out(
        context, model, pairs, run_dir, variant, resources.rollout, resources.dataset,
        endpoint.base_model_id, steering=steering,
    )  # fmt: skip
    return summary, pairs, endpoint, run_dir


@rollout_asset(group_name="evaluation", code_version="2")  # §6 metric rules
def base_student_metrics(
    context: dg.AssetExecutionContext, task_pool: dict, resources: RolloutResources
) -> dg.Output[dict]:
    """The untrained base student on the same held-out pairs, same runtime: what the deltas are
    measured against. Rollouts are kept per student, so variants sharing a student share them."""
    variant = VARIANTS[context.partition_key]
    summary, pairs, endpoint, run_dir = roll_out_base(context, task_pool, resources, subdir="base")
    facts = {
        "student": variant.student,
        "base_model": endpoint.base_model_id,
        "held_out_repos": task_pool["test_repos"],  # the test repositories (older name)
        "endpoint": endpoint.url,
        **get_student(variant.student).describe(),
        **_rollout_source(resources.dataset, pairs),
    }
    return scored_output(context, summary, resources.lineage, facts, run_dir)


@dg.asset(
    partitions_def=variant_partitions, group_name="evaluation", code_version="1", pool=GPU_POOL
)
def student_rollouts(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    served_adapter: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    serving: ServingResource,
    lineage: LineageResource,
) -> dg.Output[dict]:
    """Held-out pairs, both agents played by the served adapter (token ids captured), default
    coop prompt, the variant's student step and context limits. Resumable per adapter."""
    variant = VARIANTS[context.partition_key]
    summary, metadata = roll_out_adapter(
        context, variant, task_pool, served_adapter, dataset, rollout, serving
    )
    lineage.record(
        context,
        summary["data_version"],
        upstream={"served_adapter": served_adapter["data_version"]},
        facts=summary["facts"],
    )
    return dg.Output(
        summary, data_version=dg.DataVersion(summary["data_version"]), metadata=metadata
    )


def roll_out_adapter(
    context: dg.AssetExecutionContext,
    variant: Variant,
    task_pool: dict,
    served: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    serving: ServingResource,
) -> tuple[dict, dict]:
    """The held-out rollouts of one served adapter (`served`: a served_adapter or
    dropped_adapter output) and their metadata; shared by student_rollouts and
    dropped_adapter_metrics. The run directory is keyed by the adapter's content name, so the
    same weights are rolled out once whichever asset asks."""
    pairs = select_pairs(dataset.root, _held_out(task_pool), dataset.subset_name)
    run_dir = rollout.run_dir(variant.name, "student") / served["adapter_name"]
    # the student the adapter was served on (a dropped adapter's lineage may name its own)
    student = served.get("student") or variant.student
    with serving.serve_adapter(student, served["adapter_path"], log=context.log.info) as (
        endpoint,
        served_as,
    ):
        model = endpoint.chat_model(
            served["adapter_name"],
            max_tokens=int(variant.student_rollout.get("max_tokens", 320)),
        )
        summary = _roll_out(
            context, model, pairs, run_dir, variant, rollout, dataset, served["adapter_name"]
        )
    stable = ("run_dir", "statuses", "pair_ids", "mean_steps", "both_passed_rate")
    summary["data_version"] = content_version({k: summary[k] for k in stable})
    summary["facts"] = {
        **served.get("facts", {}),
        "adapter_name": served["adapter_name"],
        "adapter_served_as": served_as,
        "held_out_repos": task_pool["test_repos"],  # the test repositories (older name)
        **_rollout_source(dataset, pairs),
    }
    metadata = {
        "run_dir": dg.MetadataValue.path(summary["run_dir"]),
        "adapter_name": served["adapter_name"],
        "adapter_served_as": served_as,
        "pairs_done": summary["n_pairs"] - summary["statuses"].get("missing", 0),
        "statuses": dg.MetadataValue.json(summary["statuses"]),
        "mean_steps": summary["mean_steps"],
        "wall_time_s": summary["wall_time_s"],
    }
    return summary, metadata


@dg.asset(
    partitions_def=variant_partitions,
    group_name="evaluation",
    code_version="2",  # §6 metric rules
    check_specs=bar_check_specs("behaviour_metrics", variant_partitions),
)
def behaviour_metrics(
    context: dg.AssetExecutionContext,
    student_rollouts: dict,
    base_student_metrics: dict,
    lineage: LineageResource,
):
    """The three metrics on the student's held-out rollouts with n and Wilson intervals,
    CooperBench success rates, per-task/per-pair breakdowns, and deltas over the base."""
    yield from score_rollouts(
        context,
        student_rollouts,
        lineage,
        base=base_student_metrics,
        upstream={
            "student_rollouts": student_rollouts["data_version"],
            "base_student_metrics": base_student_metrics["data_version"],
        },
    )


def score_rollouts(
    context: dg.AssetExecutionContext,
    rollouts: dict,
    lineage: LineageResource,
    *,
    base: dict | None,
    upstream: dict[str, str],
    base_rates: dict[str, float] | None = None,
    metadata: dict | None = None,
):
    """Metrics of `rollouts` (a roll_out_adapter summary), deltas over `base` (the untrained
    student's metrics; or only its recorded `base_rates`), lineage (`upstream`: asset ->
    data version), and the seed's bars as checks."""
    metrics = score_pair_ids(rollouts["run_dir"], rollouts["pair_ids"], warn=context.log.warning)
    s = metrics["summary"]
    extra: dict = {}
    if base is not None:
        b = base["summary"]
        metrics["delta_over_base"] = {m: s[f"{m}_rate"] - b[f"{m}_rate"] for m in THRESHOLDS}
        # the same deltas over the pairs both scored, with a paired cluster-bootstrap interval
        metrics["delta_over_base_stats"] = paired_deltas(metrics, base)
        extra = {
            **{f"delta_{m}": round(v, 4) for m, v in metrics["delta_over_base"].items()},
            "delta_over_base_stats": dg.MetadataValue.json(metrics["delta_over_base_stats"]),
            "base_table": dg.MetadataValue.md(metrics_table(b)),
        }
    elif base_rates:  # only the base's recorded rates: point deltas, no paired interval
        metrics["delta_over_base"] = {
            m: s[f"{m}_rate"] - base_rates[m] for m in THRESHOLDS if m in base_rates
        }
        extra = {f"delta_{m}": round(v, 4) for m, v in metrics["delta_over_base"].items()}
    metrics["data_version"] = content_version(metrics["per_pair"])
    lineage.record(
        context,
        metrics["data_version"],
        upstream=upstream,
        facts=rollouts.get("facts", {}),
        metrics=s,
        deltas=metrics.get("delta_over_base_stats"),  # none for a dropped adapter
    )
    yield dg.Output(
        metrics,
        data_version=dg.DataVersion(metrics["data_version"]),
        metadata={**(metadata or {}), **_metric_metadata(s), **extra},
    )
    for m, bar in THRESHOLDS.items():
        rate = s[f"{m}_rate"]
        check = s["bar_checks"][m]  # the seed's check is the point estimate; the bound is said
        lower = check["lower_bound"]
        clears = "clears" if check["lower_bound_clears_bar"] else "does not clear"
        yield dg.AssetCheckResult(
            check_name=f"{m}_meets_seed_bar",
            passed=rate >= bar,
            metadata={
                "rate": rate,
                "threshold": bar,
                "n": s["n_agents" if m == "follow_through" else "n_pairs"],
                "lower_bound_clears_bar": check["lower_bound_clears_bar"],
                **({"cluster_ci95_low": lower} if lower is not None else {}),
            },
            description=f"{m} {rate:.0%} vs bar {bar:.0%}; the cluster-bootstrap 95% "
            f"interval's lower bound {clears} it",
        )


@dg.asset(
    group_name="evaluation",
    code_version="2",  # controls, intervals, seed groups
    # the controls live in assets/controls.py (which imports this module)
    deps=[behaviour_metrics, "base_steering_metrics", "control_copier_metrics"],
)
def distillation_report(
    context: dg.AssetExecutionContext, lineage: LineageResource, rollout: RolloutResource
) -> dg.MaterializeResult:
    """Per variant: the teacher's ceiling, the student, the paired delta over the base, and
    the controls (base, base + steering, copier) with n and 95 % intervals, copyable metrics
    marked; variants differing only by seed grouped (mean and spread). Queried from the
    lineage store (the seed's Tier-5 table), with a plot of teacher vs student follow-through."""
    rows = report_rows(lineage.store, VARIANTS)
    markdown = report_markdown(rows, seed_groups(VARIANTS))
    png_path = Path(rollout.root) / "report" / "follow_through.png"
    png = report_plot(rows, png_path)
    (png_path.parent / "report.md").write_text(markdown + "\n")
    context.log.info("distillation report\n" + markdown)
    image = base64.b64encode(png).decode()
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "plot": dg.MetadataValue.md(
                f"![teacher vs student follow-through](data:image/png;base64,{image})"
            ),
            "plot_path": dg.MetadataValue.path(str(png_path)),
            "variants": len(rows),
        }
    )
