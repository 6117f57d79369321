"""The task pool (the `task_pool` asset, ``coop-dag tasks``): which tasks and features pass the
task checks (`check_task`: runner present, both patches of a feature applying to the base), the
JSON-serialisable summary of the accepted pairs by split (`task_pool_summary`), and a split's
pair ids for the assets downstream (`require_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from coop_dag.dataset.base_repo import base_index, run_git
from coop_dag.dataset.discovery import dataset_root, discover_pairs, repo_names
from coop_dag.dataset.manifests import load_manifest
from coop_dag.dataset.tasks import (
    SPLITS,
    Feature,
    Pair,
    RepoSplit,
    Subset,
    Task,
    TaskError,
    check_split,
    split_pairs,
)

NO_BASE = "base repository unavailable"  # how check_task says a task has no readable base


# --------------------------------------------------------------------------------------------
# task checks (what task_pool accepts)


def _patch_problem(patch: Path, cwd: Path, env: dict[str, str]) -> str | None:
    """Why `patch` cannot be used on the base at `cwd`/`env` (None: it applies)."""
    if not patch.is_file():
        return f"missing {patch.name} ({patch})"
    if not patch.read_text(encoding="utf-8", errors="replace").strip():
        return f"empty {patch.name} ({patch})"
    args = ["apply", "--check", "--cached", "--whitespace=nowarn", str(patch.resolve())]
    try:
        run_git(args, cwd, env)
    except TaskError as exc:
        stderr = str(exc).split(f"failed in {cwd}: ", 1)[-1]
        return f"{patch.name} does not apply to the base: {' '.join(stderr.split())[:300]}"
    return None


def check_task(
    task: Task, mirror_dir: Path | None = None, features: Iterable[int] | None = None
) -> dict[int | None, list[str]]:
    """What makes a task unusable, `{None: [...]}` for the whole task (no runner.sh, no base)
    and `{feature_id: [...]}` per feature (feature.patch or tests.patch missing, empty or not
    applying to the base); `{}` when everything checked is fine. `features` limits the
    per-feature checks (default: all)."""
    problems: dict[int | None, list[str]] = {}
    if not task.runner.is_file():
        problems[None] = [f"missing runner.sh ({task.runner})"]
    wanted = sorted(task.features if features is None else features)
    try:
        with base_index(task, mirror_dir) as (cwd, env):
            for fid in wanted:
                feature = task.features[fid]
                found = [
                    why
                    for patch in (feature.feature_patch, feature.tests_patch)
                    if (why := _patch_problem(patch, cwd, env))
                ]
                if found:
                    problems[fid] = found
    except TaskError as exc:
        problems.setdefault(None, []).append(f"{NO_BASE}: {exc}")
    return problems


# --------------------------------------------------------------------------------------------
# the task-pool summary


def task_pool_summary(
    dataset_dir: Path | str,
    split: RepoSplit,
    subset: str | Subset | None = None,
    *,
    mirror_dir: Path | None = None,
    check_patches: bool = True,
) -> dict:
    """A JSON-serialisable description of the task pool: every accepted pair with its split
    (`train` / `validation` / `test`), each feature's task files (and where they came from),
    pairs per repository and split, each pair's gold merge status from the task manifest when
    present, and the tasks and features rejected by `check_task` with the reason (their pairs
    are left out; `check_patches=False` skips the check).

    Split names must be repositories of the dataset (TaskError otherwise); a split repository
    with no pair in the chosen subset simply contributes no pairs. TaskError too when nothing
    survives the check.
    """
    root = dataset_root(dataset_dir)
    check_split(split, repo_names(root), root)
    found = discover_pairs(root, subset=subset, mirror_dir=mirror_dir)
    rejected, bad = _rejections(found, mirror_dir) if check_patches else ([], set())
    pairs = [
        p
        for p in found
        if not {(p.repo, p.task_id, None), (p.repo, p.task_id, p.feature_a),
                (p.repo, p.task_id, p.feature_b)} & bad
    ]  # fmt: skip
    if found and not pairs:
        raise TaskError(
            f"no task of {root} passed the task checks: "
            + "; ".join(f"{r['where']}: {r['reason']}" for r in rejected[:5])
        )
    by_split = split_pairs(pairs, split)
    records, features_seen, merge_counts, n_tasks = _pair_records(pairs, split)
    pairs_per_repo: dict[str, int] = {}
    for pair in pairs:
        pairs_per_repo[pair.repo] = pairs_per_repo.get(pair.repo, 0) + 1
    sub_name = subset.name if isinstance(subset, Subset) else subset
    return {
        "dataset_dir": str(root),
        "subset": sub_name,
        "n_tasks": n_tasks,
        "n_pairs": len(records),
        **{f"n_{name}_pairs": len(by_split[name]) for name in SPLITS},
        "repos": sorted(pairs_per_repo),
        "validation_repos": list(split.validation),
        "test_repos": list(split.test),
        "held_out_repos": list(split.test),  # older name of the test repositories
        "pairs_per_repo": pairs_per_repo,
        "features": {
            f"{repo}/{task_id}/feature{fid}": {"files": list(f.files), "source": f.files_source}
            for (repo, task_id, fid), f in sorted(features_seen.items())
        },
        "features_without_paths": [
            f"{repo}/{task_id}/feature{fid}"
            for (repo, task_id, fid), f in sorted(features_seen.items())
            if not f.files
        ],
        "rejected": rejected,
        "n_rejected_pairs": len(found) - len(pairs),
        "merge_status": merge_counts,
        "pairs": records,
    }


def _rejections(
    found: Sequence[Pair], mirror_dir: Path | None
) -> tuple[list[dict], set[tuple[str, int, int | None]]]:
    """`(rejected, bad)`: `check_task` run on each task of `found`, limited to the features its
    pairs use; `rejected` lists `{"where", "reason"}`, `bad` the `(repo, task_id, feature id or
    None for the whole task)` whose pairs are left out."""
    rejected: list[dict] = []
    bad: set[tuple[str, int, int | None]] = set()
    tasks = {(p.repo, p.task_id): p.task for p in found}
    used: dict[tuple[str, int], set[int]] = {key: set() for key in tasks}
    for p in found:
        used[(p.repo, p.task_id)].update((p.feature_a, p.feature_b))
    for key, task in tasks.items():
        for fid, reasons in check_task(task, mirror_dir, features=used[key]).items():
            bad.add((task.repo, task.task_id, fid))
            where = task.key if fid is None else f"{task.key}/feature{fid}"
            rejected += [{"where": where, "reason": r} for r in reasons]
    return rejected, bad


def _pair_records(
    pairs: Sequence[Pair], split: RepoSplit
) -> tuple[list[dict], dict[tuple[str, int, int], Feature], dict[str, int], int]:
    """`(records, features, merge_counts, n_tasks)` of the accepted pairs: one record per pair
    (split, task files, gold merge status from its task's manifest), the features they use, the
    merge statuses counted, and how many tasks they come from."""
    manifests: dict[tuple[str, int], dict | None] = {}
    records = []
    features_seen: dict[tuple[str, int, int], Feature] = {}
    merge_counts = {"clean": 0, "conflicts": 0, "unknown": 0}
    for pair in pairs:
        key = (pair.repo, pair.task_id)
        if key not in manifests:
            manifests[key] = load_manifest(pair.task)
        manifest = manifests[key]
        merge = (manifest or {}).get("merges", {}).get(pair.pair_key)
        merge_counts[merge or "unknown"] += 1
        fa, fb = pair.features
        for f in (fa, fb):
            features_seen[(f.repo, f.task_id, f.feature_id)] = f
        records.append(
            {
                "pair_id": pair.pair_id,
                "repo": pair.repo,
                "task_id": pair.task_id,
                "feature_a": pair.feature_a,
                "feature_b": pair.feature_b,
                "split": split.split_of(pair.repo),
                "files_a": list(fa.files),
                "files_b": list(fb.files),
                "merge": merge,
            }
        )
    return records, features_seen, merge_counts, len(manifests)


# --------------------------------------------------------------------------------------------
# a split's pair ids


def pair_ids_in(summary: dict, split_name: str) -> list[str]:
    """The pair ids of one split (`train`, `validation`, `test`) of a `task_pool_summary`."""
    if split_name not in SPLITS:
        raise TaskError(f"unknown split {split_name!r}, expected one of {SPLITS}")
    return [p["pair_id"] for p in summary["pairs"] if p["split"] == split_name]


def require_pairs(summary: dict, split_name: str = "train") -> list[str]:
    """The pair ids of one split of a task pool, or TaskError saying why there are none."""
    ids = pair_ids_in(summary, split_name)
    if ids:
        return ids
    where = summary["dataset_dir"] + (f" (subset {summary['subset']})" if summary["subset"] else "")
    rejected = f"{summary['n_rejected_pairs']} rejected by the task checks"
    if split_name == "train":
        raise TaskError(
            f"no training pairs in {where}: its {summary['n_pairs']} pair(s) are all in "
            f"validation repositories {summary['validation_repos']} or test repositories "
            f"{summary['test_repos']} ({rejected}); training needs at least one repository "
            "outside both splits"
        )
    repos = summary[f"{split_name}_repos"]
    raise TaskError(
        f"no {split_name} pairs in {where}: none of its {summary['n_pairs']} pair(s) comes from "
        f"the {split_name} repositories {repos} ({rejected})"
    )


def require_train_pairs(summary: dict) -> list[str]:
    """The training pair ids of a task pool, or TaskError saying why there are none."""
    return require_pairs(summary, "train")
