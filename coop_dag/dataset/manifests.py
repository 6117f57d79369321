"""Task manifests (`task<N>/manifest.json`, docs/dataset-spec.md): reading and checking one
(`load_manifest`), and computing the gold merge results it records (`compute_merges`: each
feature's gold patch committed on the base, each pair merged with `git merge-tree`), for
``coop-dag dataset manifest`` (`write_manifests`).
"""

from __future__ import annotations

import json
import re
import tempfile
from itertools import combinations
from pathlib import Path

from coop_dag.dataset.base_repo import BASE_GIT_ENV, checkout_base, git_proc, run_git
from coop_dag.dataset.discovery import load_task, task_dirs
from coop_dag.dataset.tasks import Task, TaskError

MERGE_STATUSES = ("clean", "conflicts")


def load_manifest(task: Task) -> dict | None:
    """The bundled `task<N>/manifest.json` (see docs/dataset-spec.md), validated; None if absent."""
    path = task.manifest_path
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"malformed manifest {path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskError(f"malformed manifest {path}: expected an object")
    merges = data.get("merges", {})
    if not isinstance(merges, dict):
        raise TaskError(f"malformed manifest {path}: 'merges' must be an object")
    for key, status in merges.items():
        if not re.fullmatch(r"f\d+_f\d+", str(key)):
            raise TaskError(f"malformed manifest {path}: merges key {key!r} is not f<a>_f<b>")
        if status not in MERGE_STATUSES:
            raise TaskError(
                f"malformed manifest {path}: merges[{key!r}] = {status!r}, "
                f"expected one of {MERGE_STATUSES}"
            )
    if "repo" in data and data["repo"] != task.repo:
        raise TaskError(f"manifest {path} names repo {data['repo']!r}, expected {task.repo!r}")
    if "task_id" in data and data["task_id"] != task.task_id:
        raise TaskError(
            f"manifest {path} names task_id {data['task_id']!r}, expected {task.task_id}"
        )
    return data


def _commit_patch(repo: Path, base: str, patch: Path, index: Path) -> str:
    """A commit of `patch` on `base`, made with plumbing (the work tree is untouched)."""
    env = {**BASE_GIT_ENV, "GIT_INDEX_FILE": str(index)}
    run_git(["read-tree", base], repo, env)
    if patch.read_text(encoding="utf-8", errors="replace").strip():
        run_git(["apply", "--cached", "--whitespace=nowarn", str(patch.resolve())], repo, env)
    tree = run_git(["write-tree"], repo, env)
    return run_git(["commit-tree", tree, "-p", base, "-m", patch.parent.name], repo, BASE_GIT_ENV)


def compute_merges(task: Task, mirror_dir: Path | None = None) -> dict[str, str]:
    """`{"f<a>_f<b>": "clean" | "conflicts"}` for every pair of the task: each feature's gold
    patch committed on the base, each pair merged with `git merge-tree --write-tree`."""
    with tempfile.TemporaryDirectory(prefix="coop-dag-merges-") as tmp:
        repo = Path(tmp) / "repo"
        base = checkout_base(task, repo, mirror_dir)
        commits = {
            fid: _commit_patch(repo, base, f.feature_patch, Path(tmp) / f"index{fid}")
            for fid, f in task.features.items()
        }
        merges = {}
        for a, b in combinations(task.features, 2):
            proc = git_proc(
                ["merge-tree", "--write-tree", commits[a], commits[b]],
                repo,
                BASE_GIT_ENV,
                check=False,
            )
            if proc.returncode not in (0, 1):
                raise TaskError(f"git merge-tree failed for {task.key} f{a}_f{b}: {proc.stderr}")
            merges[f"f{a}_f{b}"] = MERGE_STATUSES[proc.returncode]  # 0 clean, 1 conflicts
        return merges


def compute_manifest(task: Task, mirror_dir: Path | None = None) -> dict:
    """The task's manifest.json (docs/dataset-spec.md): repo, task id, features, merges."""
    return {
        "repo": task.repo,
        "task_id": task.task_id,
        "features": sorted(task.features),
        "merges": compute_merges(task, mirror_dir),
    }


def write_manifests(
    dataset_dir: Path | str, mirror_dir: Path | None = None, *, dry_run: bool = False
) -> list[tuple[Task, dict, bool]]:
    """Compute every task's manifest.json; write it unless `dry_run`. Returns
    `(task, manifest, changed)` per task (changed: the file was absent or different)."""
    root = Path(dataset_dir)
    out = []
    for repo, task_dir in task_dirs(root):
        task = load_task(repo, task_dir, mirror_dir)
        manifest = compute_manifest(task, mirror_dir)
        path = task.manifest_path
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        text = json.dumps(manifest, indent=2) + "\n"
        changed = old is None or json.loads(old) != manifest
        if changed and not dry_run:
            path.write_text(text, encoding="utf-8")
        out.append((task, manifest, changed))
    return out
