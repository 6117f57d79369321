"""Stage 0: the task pool (all feature pairs, held-out split by repository)."""

import dagster as dg

from coop_dag.tasks import task_pool_summary
from resources.dataset import DatasetResource


def _pairs_table(summary: dict) -> str:
    rows = ["| repo | pairs | split |", "|---|---|---|"]
    held = set(summary["held_out_repos"])
    for repo, n in sorted(summary["pairs_per_repo"].items()):
        rows.append(f"| {repo} | {n} | {'held-out' if repo in held else 'train'} |")
    return "\n".join(rows)


@dg.asset(group_name="tasks", code_version="1")
def task_pool(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dict:
    """Every feature pair of the dataset, split train / held-out by repository (never by task),
    with the file paths each feature.md names (the same regex the behaviour metrics use)."""
    summary = task_pool_summary(
        dataset.root, held_out_repos=dataset.held_out, subset=dataset.subset_name
    )
    n_train = sum(1 for p in summary["pairs"] if p["split"] == "train")
    context.log.info(
        f"task_pool: {len(summary['pairs'])} pairs ({n_train} train) from {dataset.root}"
    )
    context.add_output_metadata(
        {
            "dataset_dir": str(dataset.root),
            "n_pairs": len(summary["pairs"]),
            "n_train_pairs": n_train,
            "n_held_out_pairs": len(summary["pairs"]) - n_train,
            "held_out_repos": ", ".join(summary["held_out_repos"]),
            "pairs_per_repo": dg.MetadataValue.md(_pairs_table(summary)),
            "features_without_paths": ", ".join(summary["features_without_paths"]) or "none",
        }
    )
    return summary
