"""Validation of the bundled CooperBench-format dataset against docs/dataset-spec.md.

Every `*_task/task<N>/` directory found under coop_dag/bundled/dataset is checked (nothing is
skipped): layout, feature.md shape, Files Modified vs the gold patch, and real behaviour — in a
fresh base checkout the repo's tests pass, `tests.patch` alone makes only its own tests fail, and
`tests.patch` + `feature.patch` makes everything pass (through the task's own runner.sh) — and
every pair's gold merge result recomputed with git equals manifest.json.

One base checkout is reused per worker within a task: runner.sh resets the work tree
(`git reset --hard; git clean -fdx`) on exit, and each run asserts the tree is clean again.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import pytest

from coop_dag import BUNDLED_DATASET, PACKAGE_DIR
from coop_dag.dataset.base_repo import BASE_GIT_ENV, checkout_base
from coop_dag.dataset.discovery import discover_pairs, discover_tasks, load_subset, load_task
from coop_dag.dataset.manifests import load_manifest
from coop_dag.dataset.pool import task_pool_summary
from coop_dag.dataset.tasks import BUNDLED_SPLIT, Task, split_pairs

RUNNER_TEMPLATE = PACKAGE_DIR / "bundled" / "runner_template.sh"
TASK_DIRS = sorted(p for p in BUNDLED_DATASET.glob("*_task/task*") if p.is_dir())
TASK_IDS = [f"{p.parent.name}/{p.name}" for p in TASK_DIRS]
HEADINGS = (
    "**Title**:",
    "**Pull Request Details**",
    "**Description**:",
    "**Technical Background**:",
    "**Solution**:",
    "**Files Modified**",
)
WORKERS = max(1, min(4, os.cpu_count() or 1))

GIT_ENV = {
    k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")
}


def git(cwd: Path, *args: str, env: dict | None = None, check: bool = True):
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**GIT_ENV, **(env or {})},
        capture_output=True,
        text=True,
        check=check,
    )


def task_of(task_dir: Path) -> Task:
    return load_task(task_dir.parent.name, task_dir)


def patch_files(patch: Path) -> dict[str, str]:
    """`{path: "new"|"deleted"|"modified"}` for each file a git-format patch touches."""
    out: dict[str, str] = {}
    for block in re.split(r"^diff --git ", patch.read_text(encoding="utf-8"), flags=re.M)[1:]:
        header = block.split("\n@@", 1)[0]
        m = re.search(r"^\+\+\+ b/(\S+)", header, re.M) or re.search(r"^--- a/(\S+)", header, re.M)
        path = m.group(1) if m else block.split()[1].removeprefix("b/")
        if re.search(r"^new file mode", header, re.M) or "--- /dev/null" in header:
            out[path] = "new"
        elif re.search(r"^deleted file mode", header, re.M) or "+++ /dev/null" in header:
            out[path] = "deleted"
        else:
            out[path] = "modified"
    return out


def source_modules(repo: Path) -> dict[str, int]:
    """Non-test Python modules of a bundled repo with their non-blank line counts."""
    out = {}
    for py in sorted(repo.rglob("*.py")):
        rel = py.relative_to(repo)
        if rel.parts[0] == "tests" or "__pycache__" in rel.parts:
            continue
        out[rel.as_posix()] = sum(1 for line in py.read_text().splitlines() if line.strip())
    return out


# ---------------------------------------------------------------------------------------------
# the dataset as a whole


def test_bundled_dataset_size() -> None:
    tasks = discover_tasks(BUNDLED_DATASET)  # raises on any malformed task
    assert {t.dir for t in tasks} == set(TASK_DIRS), "every task directory is discovered"
    repos = {t.repo for t in tasks}
    assert len(repos) >= 13, f"expected >= 13 repositories, found {sorted(repos)}"
    small = {t.key: len(t.features) for t in tasks if len(t.features) < 4}
    assert not small, f"tasks with fewer than 4 features: {small}"
    pairs = discover_pairs(BUNDLED_DATASET)
    assert len(pairs) >= 78, f"expected >= 78 pairs, found {len(pairs)}"
    assert set(BUNDLED_SPLIT.held_out) <= repos
    split = split_pairs(pairs, BUNDLED_SPLIT)
    assert split["train"] and split["validation"] and split["test"]
    sides = [{p.repo for p in split[name]} for name in ("train", "validation", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_bundled_task_pool_summary() -> None:
    summary = task_pool_summary(BUNDLED_DATASET, BUNDLED_SPLIT)
    assert summary["n_pairs"] == len(discover_pairs(BUNDLED_DATASET))
    assert summary["rejected"] == [], "every bundled task passes the task_pool checks"
    assert summary["features_without_paths"] == []
    assert summary["merge_status"]["unknown"] == 0, "every pair has a manifest merge status"
    for name in ("validation", "test"):
        in_split = {p["repo"] for p in summary["pairs"] if p["split"] == name}
        assert in_split == set(getattr(BUNDLED_SPLIT, name))


def test_bundled_lite_subset() -> None:
    subset = load_subset(BUNDLED_DATASET, "lite")
    tasks = discover_tasks(BUNDLED_DATASET)
    assert set(subset.tasks) == {(t.repo, t.task_id) for t in tasks}, "lite covers every task"
    assert all(listed is not None and len(listed) == 2 for listed in subset.tasks.values())
    pairs = discover_pairs(BUNDLED_DATASET, subset="lite")  # every listed pair exists
    assert len(pairs) == 2 * len(tasks)
    summary = task_pool_summary(BUNDLED_DATASET, BUNDLED_SPLIT, subset="lite")
    assert summary["n_test_pairs"] > 0 and summary["n_train_pairs"] > 0
    assert summary["merge_status"]["clean"] > 0 and summary["merge_status"]["conflicts"] > 0


# ---------------------------------------------------------------------------------------------
# per task: layout and text


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_task_layout(task_dir: Path) -> None:
    task = task_of(task_dir)
    assert len(task.features) >= 4, f"{task.key}: {len(task.features)} features"
    assert task.bundled_source.is_dir()
    assert task.runner.read_bytes() == RUNNER_TEMPLATE.read_bytes(), (
        f"{task.runner} differs from {RUNNER_TEMPLATE}"
    )

    modules = source_modules(task.bundled_source)
    substantial = {m: n for m, n in modules.items() if n >= 10}
    assert len(substantial) >= 3, f"{task.key}: several source modules expected, got {modules}"
    assert sum(modules.values()) >= 120, f"{task.key}: {sum(modules.values())} source lines"
    assert list((task.bundled_source / "tests").glob("test_*.py")), f"{task.key}: no tests"

    manifest = load_manifest(task)
    assert manifest is not None, f"missing {task.manifest_path}"
    assert manifest["repo"] == task.repo and manifest["task_id"] == task.task_id
    assert manifest["features"] == sorted(task.features)
    expected_keys = {f"f{a}_f{b}" for a, b in combinations(task.features, 2)}
    assert set(manifest["merges"]) == expected_keys, f"{task.manifest_path}: merges keys"
    assert "conflicts" in manifest["merges"].values(), f"{task.key}: no conflicting pair"
    assert "clean" in manifest["merges"].values(), f"{task.key}: no clean pair"

    problems = []
    for fid, feature in task.features.items():
        where = f"{task.key} feature{fid}"
        text = feature.description
        positions = [text.find(h) for h in HEADINGS]
        if -1 in positions or positions != sorted(positions):
            problems.append(f"{where}: headings missing or out of order: {positions}")
        listed = feature.files_modified
        if not listed:
            problems.append(f"{where}: empty Files Modified list")
        for path in listed:
            if not (task.bundled_source / path).is_file():
                problems.append(f"{where}: Files Modified path not in base: {path}")
        changed = patch_files(feature.feature_patch)
        if set(listed) != set(changed):
            problems.append(
                f"{where}: Files Modified {sorted(listed)} != feature.patch files {sorted(changed)}"
            )
        if any(p.startswith("tests/") for p in changed):
            problems.append(f"{where}: feature.patch touches tests: {sorted(changed)}")
        added = patch_files(feature.tests_patch)
        if not added or any(
            kind != "new" or not p.startswith("tests/") for p, kind in added.items()
        ):
            problems.append(f"{where}: tests.patch must only add new tests/ files: {added}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_task_has_same_file_pairs(task_dir: Path) -> None:
    """Every task (so every split, whichever repositories it holds) has pairs whose features
    edit the same file, and at least one of them conflicts under git merge."""
    task = task_of(task_dir)
    merges = (load_manifest(task) or {}).get("merges", {})
    shared = {
        f"f{a}_f{b}": set(fa.files_modified) & set(fb.files_modified)
        for (a, fa), (b, fb) in combinations(task.features.items(), 2)
        if set(fa.files_modified) & set(fb.files_modified)
    }
    assert shared, f"{task.key}: no pair of features edits the same file"
    assert any(merges.get(key) == "conflicts" for key in shared), (
        f"{task.key}: no same-file pair conflicts (same-file pairs: {sorted(shared)})"
    )


# ---------------------------------------------------------------------------------------------
# per task: behaviour through runner.sh


def run_runner(task: Task, repo: Path, patch_dir: Path, *patches: str) -> tuple[int, str]:
    env = {
        **GIT_ENV,
        "REPO_DIR": str(repo),
        "PATCH_DIR": str(patch_dir),
        "PYTHON": sys.executable,
        # Bundled tasks use pytest alone; don't load this environment's pytest plugins.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        ["bash", str(task.runner), *patches],
        cwd=patch_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def failing_files(output: str) -> set[str]:
    """Test files named in pytest's short summary (FAILED/ERROR lines)."""
    return {m.group(1) for m in re.finditer(r"^(?:FAILED|ERROR) (tests/[^\s:]+)", output, re.M)}


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_task_behaviour(task_dir: Path, tmp_path: Path) -> None:
    task = task_of(task_dir)
    checkouts: queue.Queue[Path] = queue.Queue()
    shas = set()
    for i in range(min(WORKERS, len(task.features))):
        dest = tmp_path / f"checkout{i}"
        shas.add(checkout_base(task, dest))
        checkouts.put(dest)
    assert len(shas) == 1
    empty = tmp_path / "empty.patch"
    empty.write_text("")

    def clean(repo: Path) -> bool:
        return git(repo, "status", "--porcelain", "--ignored").stdout == ""

    # Base alone: all tests pass (an empty patch is a no-op for runner.sh).
    repo = checkouts.get()
    code, out = run_runner(task, repo, tmp_path, "empty.patch")
    assert code == 0, f"{task.key}: base tests fail:\n{out}"
    assert re.search(r"\d+ passed", out) and clean(repo)
    checkouts.put(repo)

    def check(fid: int) -> list[str]:
        feature = task.features[fid]
        where = f"{task.key} feature{fid}"
        new_tests = {p for p, kind in patch_files(feature.tests_patch).items() if kind == "new"}
        repo = checkouts.get()
        try:
            problems = []
            code, out = run_runner(task, repo, feature.dir, "tests.patch")
            failed = failing_files(out)
            if code not in (1, 2) or not failed:
                problems.append(f"{where}: tests.patch alone should fail (exit {code}):\n{out}")
            elif not failed <= new_tests:
                problems.append(
                    f"{where}: tests.patch alone breaks other tests {sorted(failed - new_tests)}"
                )
            if not clean(repo):
                problems.append(f"{where}: runner left the checkout dirty")
            code, out = run_runner(task, repo, feature.dir, "tests.patch", "feature.patch")
            if code != 0 or failing_files(out):
                problems.append(f"{where}: tests.patch + feature.patch should pass:\n{out}")
            if not clean(repo):
                problems.append(f"{where}: runner left the checkout dirty")
            return problems
        finally:
            checkouts.put(repo)

    with ThreadPoolExecutor(max_workers=checkouts.qsize()) as pool:
        problems = [p for result in pool.map(check, task.features) for p in result]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# per task: gold merges, recomputed with git


def commit_patch(repo: Path, base: str, patch: Path, index: Path) -> str:
    """A commit of `patch` applied on `base`, made with plumbing (the work tree is untouched)."""
    env = {"GIT_INDEX_FILE": str(index), **BASE_GIT_ENV}
    git(repo, "read-tree", base, env=env)
    if patch.read_text(encoding="utf-8").strip():  # empty patch: no-op, as in runner.sh
        applied = git(repo, "apply", "--cached", str(patch), env=env, check=False)
        assert applied.returncode == 0, f"{patch} does not apply on base: {applied.stderr}"
    tree = git(repo, "write-tree", env=env).stdout.strip()
    return git(
        repo, "commit-tree", tree, "-p", base, "-m", patch.parent.name, env=env
    ).stdout.strip()


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_task_merges_match_manifest(task_dir: Path, tmp_path: Path) -> None:
    task = task_of(task_dir)
    repo = tmp_path / "repo"
    base = checkout_base(task, repo)
    commits = {
        fid: commit_patch(repo, base, f.feature_patch, tmp_path / f"index{fid}")
        for fid, f in task.features.items()
    }
    computed = {}
    for a, b in combinations(task.features, 2):
        proc = git(repo, "merge-tree", "--write-tree", commits[a], commits[b], check=False)
        assert proc.returncode in (0, 1), f"git merge-tree failed: {proc.stderr}"
        computed[f"f{a}_f{b}"] = "clean" if proc.returncode == 0 else "conflicts"
    manifest = load_manifest(task)
    assert manifest is not None, f"missing {task.manifest_path}"
    assert manifest["merges"] == computed
