"""Stage 0: the task pool (all feature pairs, split train / validation / test by repository)."""

import dagster as dg

from coop_dag.dataset.pool import task_pool_summary
from coop_dag.dataset.tasks import SPLITS
from resources.dataset import DatasetResource


def _pairs_table(summary: dict) -> str:
    rows = ["| repo | pairs | split |", "|---|---|---|"]
    split_of = {p["repo"]: p["split"] for p in summary["pairs"]}
    for repo, n in sorted(summary["pairs_per_repo"].items()):
        rows.append(f"| {repo} | {n} | {split_of[repo]} |")
    return "\n".join(rows)


def _rejected_table(summary: dict) -> str:
    rows = ["| task / feature | reason |", "|---|---|"]
    rows += [f"| {r['where']} | {r['reason'].replace('|', '/')} |" for r in summary["rejected"]]
    return "\n".join(rows)


@dg.asset(
    group_name="tasks",
    code_version="2",
    check_specs=[dg.AssetCheckSpec("all_tasks_accepted", asset="task_pool")],
)
def task_pool(context: dg.AssetExecutionContext, dataset: DatasetResource):
    """Every feature pair of the dataset, split train / validation / test by repository (never
    by task), with each feature's task files (its Files Modified list, else prose paths that
    exist in the base). Every task is checked first (runner.sh present, feature.patch and
    tests.patch present and applying to the base); a rejected task or feature leaves the pool
    with its reason in the log, the metadata and the `all_tasks_accepted` check."""
    config = dataset.config
    summary = task_pool_summary(
        config.root, config.split, subset=config.subset, mirror_dir=config.mirror_dir
    )
    counts = {name: summary[f"n_{name}_pairs"] for name in SPLITS}
    context.log.info(
        f"task_pool: {summary['n_pairs']} pairs "
        f"({', '.join(f'{n} {name}' for name, n in counts.items())}) from {config.root}"
    )
    for r in summary["rejected"]:
        context.log.warning(f"task_pool: rejected {r['where']}: {r['reason']}")
    yield dg.Output(
        summary,
        metadata={
            "dataset_dir": str(config.root),
            "subset": config.subset or "all pairs",
            "n_pairs": summary["n_pairs"],
            **{f"n_{name}_pairs": n for name, n in counts.items()},
            "validation_repos": ", ".join(summary["validation_repos"]),
            "test_repos": ", ".join(summary["test_repos"]),
            "pairs_per_repo": dg.MetadataValue.md(_pairs_table(summary)),
            "features_without_paths": ", ".join(summary["features_without_paths"]) or "none",
            "n_rejected_pairs": summary["n_rejected_pairs"],
            "rejected": dg.MetadataValue.md(_rejected_table(summary)),
        },
    )
    rejected = summary["rejected"]
    yield dg.AssetCheckResult(
        check_name="all_tasks_accepted",
        passed=not rejected,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected": len(rejected), "n_rejected_pairs": summary["n_rejected_pairs"]},
        description="every task passed the checks"
        if not rejected
        else f"{len(rejected)} rejected ({summary['n_rejected_pairs']} pairs left out): "
        + "; ".join(f"{r['where']}: {r['reason']}" for r in rejected[:3]),
    )
