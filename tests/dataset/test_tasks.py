"""coop_dag.dataset.tasks on real files and real git: a CooperBench-format dataset built in tmp_path
(Dockerfile with a clone line, subsets, a local mirror repository), plus the bundled tasks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from coop_dag import BUNDLED_DATASET
from coop_dag.dataset.base_repo import (
    BASE_GIT_ENV,
    checkout_base,
    checkout_from_mirror,
    mirror_candidates,
    parse_dockerfile,
)
from coop_dag.dataset.discovery import (
    discover_pairs,
    discover_tasks,
    load_feature,
    load_subset,
    load_task,
)
from coop_dag.dataset.manifests import load_manifest
from coop_dag.dataset.pool import task_pool_summary
from coop_dag.dataset.tasks import (
    BUNDLED_SPLIT,
    DEFAULT_HELD_OUT,
    Pair,
    RepoSplit,
    Subset,
    Task,
    TaskError,
    check_split,
    files_modified,
    split_pairs,
)

GIT_ENV = {**os.environ, **BASE_GIT_ENV}
for _k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
    GIT_ENV.pop(_k, None)


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------
# A small CooperBench-format dataset, written the way CooperBench's files look.

DOCKERFILE = """FROM python:3.11-slim

# Install system dependencies
RUN apt-get update && apt-get install -y \\
    git \\
    curl \\
    && rm -rf /var/lib/apt/lists/*

# Clone the repository and checkout the specific commit
WORKDIR /workspace
RUN git clone https://github.com/acme/widget.git repo && \\
    cd repo && \\
    git checkout {sha}

# Install Python dependencies
WORKDIR /workspace/repo
RUN pip install --upgrade pip && \\
    pip install -e ".[dev]"

# Copy the runner script
COPY runner.sh /usr/local/bin/
RUN chmod +x /usr/local/bin/runner.sh

ENTRYPOINT ["/usr/local/bin/runner.sh"]
"""

FEATURE_MD = """**Title**: {title}

**Pull Request Details**

**Description**:
Adds {title} to the widget, see `src/widget/{module}.py`.

**Technical Background**:
The helper in `src/widget/util.py` is reused.

**Solution**:
1. Add the function in `src/widget/{module}.py`.
2. Re-export it:

```python
# src/widget/__init__.py
from widget.{module} import {title}
```

**Files Modified**
- `src/widget/{module}.py`
- `src/widget/__init__.py`
"""

NO_PATHS_MD = """**Title**: Tidy up

**Description**:
Make the prose clearer; no particular file is named.
"""

UPSTREAM_FILES_V1 = {
    "src/widget/__init__.py": "from widget.core import spin\n",
    "src/widget/core.py": "def spin(n):\n    return n + 1\n",
    "src/widget/util.py": "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
}
FEATURE_PATCH = """diff --git a/src/widget/core.py b/src/widget/core.py
--- a/src/widget/core.py
+++ b/src/widget/core.py
@@ -1,2 +1,6 @@
 def spin(n):
     return n + 1
+
+
+def twirl(n):
+    return n + 2
"""
TESTS_PATCH = """diff --git a/tests/test_twirl.py b/tests/test_twirl.py
new file mode 100644
--- /dev/null
+++ b/tests/test_twirl.py
@@ -0,0 +1,5 @@
+from widget.core import twirl
+
+
+def test_twirl():
+    assert twirl(1) == 3
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def add_feature(task_dir: Path, fid: int, md: str | None = None) -> Path:
    fdir = task_dir / f"feature{fid}"
    module = "core" if fid % 2 else "util"
    write(
        fdir / "feature.md",
        md if md is not None else FEATURE_MD.format(title=f"f{fid}", module=module),
    )
    write(fdir / "feature.patch", FEATURE_PATCH)
    write(fdir / "tests.patch", TESTS_PATCH)
    return fdir


@pytest.fixture
def upstream(tmp_path: Path) -> dict:
    """A real upstream repository with two commits; the task pins the first."""
    up = tmp_path / "upstream"
    up.mkdir()
    git(up, "init", "-q", "-b", "main")
    for rel, text in UPSTREAM_FILES_V1.items():
        write(up / rel, text)
    git(up, "add", "-A")
    git(up, "commit", "-q", "--no-gpg-sign", "-m", "v1")
    sha1 = git(up, "rev-parse", "HEAD")
    write(up / "src/widget/core.py", "def spin(n):\n    return n + 100\n")
    git(up, "commit", "-q", "--no-gpg-sign", "-am", "v2")
    sha2 = git(up, "rev-parse", "HEAD")
    return {"path": up, "sha1": sha1, "sha2": sha2}


@pytest.fixture
def dataset(tmp_path: Path, upstream: dict) -> Path:
    ds = tmp_path / "dataset"
    write(ds / "README.md", "# dataset\n")
    write(ds / "gold_conflict_report.json", "{}\n")
    write(ds / "notes" / "task1" / "feature1" / "feature.md", "not a repo dir (no _task suffix)")
    (ds / "subsets").mkdir(parents=True)

    alpha1 = ds / "alpha_task" / "task1"
    write(alpha1 / "Dockerfile", DOCKERFILE.format(sha=upstream["sha1"]))
    write(alpha1 / "runner.sh", "#!/bin/bash\nexit 0\n")
    write(alpha1 / "combined.patch", FEATURE_PATCH)
    for fid in (1, 2, 3):
        add_feature(alpha1, fid)
    write(alpha1 / "feature3" / "feature.md", NO_PATHS_MD)
    write(alpha1 / "setup.sh", "#!/bin/bash\n")  # files in a task dir are ignored

    alpha2 = ds / "alpha_task" / "task2"
    for fid in (1, 2):
        add_feature(alpha2, fid)

    beta = ds / "beta_task" / "task7"
    for fid in (1, 2, 10):  # numeric, not lexical, feature order
        add_feature(beta, fid)
    write(
        beta / "manifest.json",
        json.dumps(
            {
                "repo": "beta_task",
                "task_id": 7,
                "features": [1, 2, 10],
                "merges": {"f1_f2": "clean", "f1_f10": "conflicts", "f2_f10": "clean"},
            }
        ),
    )

    gamma = ds / "gamma_task" / "task3"
    for fid in (1, 2):
        add_feature(gamma, fid)

    write(
        ds / "subsets" / "lite.json",
        json.dumps(
            {
                "name": "lite",
                "description": "test subset",
                "stats": {"tasks": 3, "pairs": 4, "repos": 3},
                "tasks": [
                    {"repo": "alpha_task", "task_id": 1, "pairs": [[1, 3], [3, 2]]},
                    {"repo": "beta_task", "task_id": 7, "pairs": [[2, 10]]},
                    {"repo": "gamma_task", "task_id": 3},
                ],
            },
            indent=2,
        ),
    )
    return ds


def ids(pairs: list[Pair]) -> list[str]:
    return [p.pair_id for p in pairs]


# ---------------------------------------------------------------------------------------------
# discovery


def test_discover_tasks_follows_cooperbench_layout(dataset: Path) -> None:
    tasks = discover_tasks(dataset)
    assert [t.key for t in tasks] == ["alpha_task/1", "alpha_task/2", "beta_task/7", "gamma_task/3"]
    alpha1 = tasks[0]
    assert isinstance(alpha1, Task)
    assert alpha1.dir == dataset / "alpha_task" / "task1"
    assert list(alpha1.features) == [1, 2, 3]
    assert alpha1.runner == alpha1.dir / "runner.sh"
    f1 = alpha1.features[1]
    assert (f1.repo, f1.task_id, f1.feature_id) == ("alpha_task", 1, 1)
    assert f1.feature_patch.read_text() == FEATURE_PATCH
    assert f1.tests_patch.read_text() == TESTS_PATCH
    assert list(tasks[2].features) == [1, 2, 10]


def test_discover_tasks_repo_filter(dataset: Path) -> None:
    assert [t.key for t in discover_tasks(dataset, repos=["gamma_task"])] == ["gamma_task/3"]
    assert [t.key for t in discover_tasks(dataset, repos="beta_task")] == ["beta_task/7"]


def test_all_pairs(dataset: Path) -> None:
    pairs = discover_pairs(dataset)
    assert ids(pairs) == [
        "alpha_task/1/f1_f2",
        "alpha_task/1/f1_f3",
        "alpha_task/1/f2_f3",
        "alpha_task/2/f1_f2",
        "beta_task/7/f1_f2",
        "beta_task/7/f1_f10",
        "beta_task/7/f2_f10",
        "gamma_task/3/f1_f2",
    ]
    assert all(p.feature_a < p.feature_b for p in pairs)
    fa, fb = pairs[5].features
    assert (fa.feature_id, fb.feature_id) == (1, 10)
    assert pairs[5].pair_key == "f1_f10"


def test_subset_pairs(dataset: Path) -> None:
    sub = load_subset(dataset, "lite")
    assert isinstance(sub, Subset)
    assert sub.name == "lite" and sub.description == "test subset"
    assert sub.tasks == {
        ("alpha_task", 1): ((1, 3), (2, 3)),  # [3, 2] normalised to a < b
        ("beta_task", 7): ((2, 10),),
        ("gamma_task", 3): None,  # no pairs listed: all of the task's pairs
    }
    expected = [
        "alpha_task/1/f1_f3",
        "alpha_task/1/f2_f3",
        "beta_task/7/f2_f10",
        "gamma_task/3/f1_f2",
    ]
    assert ids(discover_pairs(dataset, subset="lite")) == expected
    assert ids(discover_pairs(dataset, subset=sub)) == expected
    # A repo filter narrows a subset too.
    assert ids(discover_pairs(dataset, subset="lite", repos=["beta_task"])) == [
        "beta_task/7/f2_f10"
    ]
    # A subset pair is the same pair as the all-pairs one.
    assert set(discover_pairs(dataset, subset="lite")) <= set(discover_pairs(dataset))


def test_split_by_repository_never_by_task(dataset: Path) -> None:
    pairs = discover_pairs(dataset)
    split = split_pairs(pairs, RepoSplit(validation=["gamma_task"], test=["alpha_task"]))
    train, val, test = split["train"], split["validation"], split["test"]
    assert len(train) + len(val) + len(test) == len(pairs)
    assert {p.repo for p in test} == {"alpha_task"}
    assert {p.repo for p in val} == {"gamma_task"}
    assert {p.repo for p in train} == {"beta_task"}
    tasks = [{(p.repo, p.task_id) for p in side} for side in (train, val, test)]
    assert not (tasks[0] & tasks[1] or tasks[0] & tasks[2] or tasks[1] & tasks[2])
    # Every pair of a test task is test (both tasks of alpha_task, all 4 pairs).
    assert ids(test) == [p for p in ids(pairs) if p.startswith("alpha_task/")]
    # A bare string is one repository name, not its characters.
    assert split_pairs(pairs, RepoSplit(test="gamma_task"))["test"] == [pairs[-1]]
    assert split_pairs(pairs, RepoSplit()) == {"train": pairs, "validation": [], "test": []}


def test_repo_split_rules() -> None:
    split = RepoSplit(validation=["v_task", "v_task"], test=("t_task",))
    assert split.validation == ("v_task",) and split.held_out == ("v_task", "t_task")
    assert [split.split_of(r) for r in ("v_task", "t_task", "x_task")] == [
        "validation",
        "test",
        "train",
    ]
    with pytest.raises(TaskError, match=r"a_task.\] are in both the validation and the test"):
        RepoSplit(validation=["a_task"], test=["a_task", "b_task"])
    with pytest.raises(TaskError, match="non-empty"):
        RepoSplit(test=[""])


def test_split_unknown_repo(dataset: Path) -> None:
    known = ["alpha_task", "beta_task", "gamma_task"]
    check_split(RepoSplit(validation=["beta_task"], test=["alpha_task"]), known, dataset)
    with pytest.raises(TaskError, match=r"unknown test repositories \['alpa_task'\]"):
        check_split(RepoSplit(test=["alpa_task", "beta_task"]), known, dataset)
    with pytest.raises(TaskError, match=r"unknown validation repositories \['x_task'\]"):
        check_split(RepoSplit(validation=["x_task"]), known, dataset)


def test_bundled_split_names_bundled_repos() -> None:
    assert BUNDLED_SPLIT.test == ("webroute_task", "mdrender_task", "verspec_task")
    assert BUNDLED_SPLIT.validation == ("throttle_task",)
    assert BUNDLED_SPLIT.validation  # the probe needs validation repositories
    assert DEFAULT_HELD_OUT == BUNDLED_SPLIT.test  # the older name
    repos = {t.repo for t in discover_tasks(BUNDLED_DATASET)}
    assert set(BUNDLED_SPLIT.held_out) <= repos
    assert repos - set(BUNDLED_SPLIT.held_out), "some bundled repository trains"


# ---------------------------------------------------------------------------------------------
# feature.md paths (the shared regex in coop_dag.util.paths)


def test_feature_paths_from_backticks_code_blocks_and_files_modified(tmp_path: Path) -> None:
    md = """**Title**: Add retries

**Description**:
Wrap calls in `src/pkg/client.py` with retries (see docs/retries.md for the policy).

**Solution**:
1. Add `retry()` to `src/pkg/retry.py`.
2. Configure it:

```python
# src/pkg/settings.py
RETRIES = 3
```

**Files Modified**
- `src/pkg/client.py`
- `src/pkg/retry.py`
- `./src/pkg/settings.py`

---
Python Compatibility: see `setup.cfg`.
"""
    fdir = write(tmp_path / "feature1" / "feature.md", md).parent
    feature = load_feature("x_task", 5, fdir)
    assert feature.feature_id == 1 and feature.description == md
    # The task files are the Files Modified list, not every path the prose names.
    assert (
        feature.files
        == feature.files_modified
        == (
            "src/pkg/client.py",
            "src/pkg/retry.py",
            "src/pkg/settings.py",
        )
    )
    assert feature.files_source == "files_modified"
    assert files_modified("no such section, just `a/b.py`") == []
    # CooperBench's variants of the heading.
    assert files_modified("**Files Modified:**\n- `a/b.py`\n") == ["a/b.py"]
    assert files_modified("## Files Modified by this PR\n\n- mux.go\n- mux_test.go\n") == [
        "mux.go",
        "mux_test.go",
    ]


def test_discovered_features_carry_paths(dataset: Path) -> None:
    task = discover_tasks(dataset, repos=["alpha_task"])[0]
    assert task.features[1].files == ("src/widget/core.py", "src/widget/__init__.py")
    assert task.features[3].files == ()
    assert task.features[3].files_source == "none"


PROSE_MD = """**Title**: Spin faster

**Description**:
Like `script.py` in the docs, read `data.txt` and `file1.txt`, then change `core.py`:
the real code is in `src/widget/core.py`, and `src/widget/util.py` has the helper.
"""


def test_task_files_without_files_modified_fall_back_to_prose_paths_in_base(
    dataset: Path, upstream: dict
) -> None:
    """Without a Files Modified section, only prose paths that exist in the base repository
    count: `script.py`, `data.txt`, `file1.txt` and the bare basename `core.py` do not."""
    task_dir = dataset / "alpha_task" / "task1"
    write(task_dir / "feature2" / "feature.md", PROSE_MD)
    mirrors = dataset.parent / "mirrors"
    subprocess.run(
        [
            "git",
            "clone",
            "-q",
            "--bare",
            str(upstream["path"]),
            str(mirrors / "acme" / "widget.git"),
        ],
        check=True,
        env=GIT_ENV,
    )
    with_mirror = load_task("alpha_task", task_dir, mirrors).features[2]
    assert with_mirror.files == ("src/widget/core.py", "src/widget/util.py")
    assert with_mirror.files_source == "prose"
    # The base cannot be read (no mirror): nothing unverifiable is kept.
    without = load_task("alpha_task", task_dir).features[2]
    assert (without.files, without.files_source) == ((), "none")
    # A bundled-style source tree works the same way, without a mirror.
    bundled = dataset / "delta_task" / "task4"
    for rel, text in UPSTREAM_FILES_V1.items():
        write(bundled / "repo" / rel, text)
    add_feature(bundled, 1, PROSE_MD)
    add_feature(bundled, 2)
    feature = load_task("delta_task", bundled).features[1]
    assert feature.files == ("src/widget/core.py", "src/widget/util.py")


# ---------------------------------------------------------------------------------------------
# task pool summary


def test_task_pool_summary(dataset: Path) -> None:
    split = RepoSplit(validation=["gamma_task"], test=["beta_task"])
    # No task here has a base the check could read: the summary itself is what is tested.
    summary = task_pool_summary(dataset, split, check_patches=False)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_pairs"] == len(summary["pairs"]) == 8
    assert summary["pairs_per_repo"] == {"alpha_task": 4, "beta_task": 3, "gamma_task": 1}
    assert (summary["validation_repos"], summary["test_repos"]) == (["gamma_task"], ["beta_task"])
    assert summary["held_out_repos"] == ["beta_task"]  # the older name of test_repos
    counts = [summary[f"n_{name}_pairs"] for name in ("train", "validation", "test")]
    assert counts == [4, 1, 3]
    assert summary["rejected"] == [] and summary["n_rejected_pairs"] == 0
    assert summary["features_without_paths"] == ["alpha_task/1/feature3"]
    by_id = {p["pair_id"]: p for p in summary["pairs"]}
    p = by_id["beta_task/7/f1_f10"]
    assert p == {
        "pair_id": "beta_task/7/f1_f10",
        "repo": "beta_task",
        "task_id": 7,
        "feature_a": 1,
        "feature_b": 10,
        "split": "test",
        "files_a": ["src/widget/core.py", "src/widget/__init__.py"],
        "files_b": ["src/widget/util.py", "src/widget/__init__.py"],
        "merge": "conflicts",
    }
    assert by_id["beta_task/7/f1_f2"]["merge"] == "clean"
    assert by_id["alpha_task/1/f1_f3"]["merge"] is None  # no manifest: unknown
    assert by_id["alpha_task/1/f1_f3"]["files_b"] == []
    assert {p["split"] for p in summary["pairs"] if p["repo"] == "alpha_task"} == {"train"}
    assert {p["split"] for p in summary["pairs"] if p["repo"] == "gamma_task"} == {"validation"}
    assert summary["merge_status"] == {"clean": 2, "conflicts": 1, "unknown": 5}
    # Each feature's files once, with where they came from.
    assert summary["features"]["beta_task/7/feature10"] == {
        "files": ["src/widget/util.py", "src/widget/__init__.py"],
        "source": "files_modified",
    }
    assert summary["features"]["alpha_task/1/feature3"] == {"files": [], "source": "none"}


def test_task_pool_summary_with_subset(dataset: Path) -> None:
    summary = task_pool_summary(
        dataset, RepoSplit(test=["gamma_task"]), subset="lite", check_patches=False
    )
    assert summary["subset"] == "lite"
    assert [p["pair_id"] for p in summary["pairs"]] == [
        "alpha_task/1/f1_f3",
        "alpha_task/1/f2_f3",
        "beta_task/7/f2_f10",
        "gamma_task/3/f1_f2",
    ]
    assert [p["split"] for p in summary["pairs"]] == ["train", "train", "train", "test"]


def test_task_pool_summary_unknown_split_repo(dataset: Path) -> None:
    with pytest.raises(TaskError, match=r"unknown validation repositories \['throttle_task'\]"):
        task_pool_summary(dataset, BUNDLED_SPLIT, check_patches=False)


# ---------------------------------------------------------------------------------------------
# checkouts


def test_parse_dockerfile() -> None:
    assert parse_dockerfile(DOCKERFILE.format(sha="3ded7a6266514c1569452b0e26bcd4e75c1ee6db")) == (
        "https://github.com/acme/widget.git",
        "3ded7a6266514c1569452b0e26bcd4e75c1ee6db",
    )
    one_line = (
        "RUN git clone --depth 1 -b main https://github.com/openai/tiktoken repo"
        " && cd repo && git checkout -q abc1234"
    )
    assert parse_dockerfile(one_line) == ("https://github.com/openai/tiktoken", "abc1234")
    assert parse_dockerfile("FROM python:3.11\nRUN pip install x\n") == (None, None)


def test_mirror_candidates(tmp_path: Path) -> None:
    assert mirror_candidates("https://github.com/acme/widget.git", tmp_path) == [
        tmp_path / "acme" / "widget.git",
        tmp_path / "acme" / "widget",
        tmp_path / "widget.git",
        tmp_path / "widget",
    ]
    assert (
        mirror_candidates("git@github.com:acme/widget.git", tmp_path)[0]
        == tmp_path / "acme" / "widget.git"
    )


@pytest.mark.parametrize(
    "layout", ["acme/widget.git", "acme/widget", "widget.git", "widget"], ids=lambda s: s
)
def test_checkout_from_mirror_end_to_end(
    dataset: Path, upstream: dict, tmp_path: Path, layout: str
) -> None:
    mirror = tmp_path / "mirror"
    target = mirror / layout
    target.parent.mkdir(parents=True, exist_ok=True)
    if layout.endswith(".git"):
        git(tmp_path, "clone", "-q", "--bare", str(upstream["path"]), str(target))
    else:
        git(tmp_path, "clone", "-q", str(upstream["path"]), str(target))
    task = discover_tasks(dataset, repos=["alpha_task"])[0]
    assert not task.bundled_source.exists()

    dest = tmp_path / "work" / "agent1"
    sha = checkout_from_mirror(task, dest, mirror)
    assert sha == upstream["sha1"] != upstream["sha2"]
    assert git(dest, "rev-parse", "HEAD") == upstream["sha1"]
    assert (dest / "src/widget/core.py").read_text() == UPSTREAM_FILES_V1["src/widget/core.py"]
    assert git(dest, "status", "--porcelain") == ""
    # The gold patches apply to the checked-out base, as CooperBench's runner needs.
    git(dest, "apply", "--check", str(task.features[1].feature_patch))
    git(dest, "apply", "--check", str(task.features[1].tests_patch))

    # checkout_base dispatches to the mirror for a task without bundled source.
    dest2 = tmp_path / "work" / "agent2"
    assert checkout_base(task, dest2, mirror_dir=mirror) == sha


def test_checkout_from_mirror_errors(dataset: Path, upstream: dict, tmp_path: Path) -> None:
    task = discover_tasks(dataset, repos=["alpha_task"])[0]
    url = "https://github.com/acme/widget.git"
    dest = tmp_path / "dest"

    with pytest.raises(TaskError) as exc:
        checkout_base(task, dest)  # neither bundled source nor mirror
    assert "alpha_task/1" in str(exc.value) and url in str(exc.value)

    with pytest.raises(TaskError) as exc:
        checkout_base(task, dest, mirror_dir=tmp_path / "no-such-mirror")
    assert "alpha_task/1" in str(exc.value) and url in str(exc.value)

    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()
    with pytest.raises(TaskError) as exc:
        checkout_base(task, dest, mirror_dir=empty_mirror)
    assert "alpha_task/1" in str(exc.value) and url in str(exc.value)
    assert str(empty_mirror / "acme" / "widget.git") in str(exc.value)
    assert not dest.exists()

    # The pinned commit is missing from the mirror: nothing is left behind in dest.
    mirror = tmp_path / "mirror"
    git(
        tmp_path,
        "clone",
        "-q",
        "--bare",
        str(upstream["path"]),
        str(mirror / "acme" / "widget.git"),
    )
    write(task.dockerfile, DOCKERFILE.format(sha="0123456789abcdef0123456789abcdef01234567"))
    with pytest.raises(TaskError, match="0123456789abcdef"):
        checkout_base(task, dest, mirror_dir=mirror)
    assert not dest.exists()
    dest.mkdir()
    with pytest.raises(TaskError, match="0123456789abcdef"):
        checkout_base(task, dest, mirror_dir=mirror)
    assert dest.is_dir() and list(dest.iterdir()) == []

    # No clone line.
    write(task.dockerfile, "FROM python:3.11-slim\nRUN pip install widget\n")
    with pytest.raises(TaskError) as exc:
        checkout_base(task, dest, mirror_dir=mirror)
    assert "alpha_task/1" in str(exc.value) and "git clone" in str(exc.value)

    # Clone line but no checkout sha: the base would not be pinned.
    write(task.dockerfile, f"RUN git clone {url} repo\n")
    with pytest.raises(TaskError, match="git checkout"):
        checkout_base(task, dest, mirror_dir=mirror)

    # No Dockerfile at all.
    task.dockerfile.unlink()
    with pytest.raises(TaskError, match="alpha_task/1"):
        checkout_base(task, dest, mirror_dir=mirror)


def _bundled_task() -> Task:
    repos = sorted(BUNDLED_DATASET.glob("*_task/task*/repo"))
    assert repos, f"no bundled task sources under {BUNDLED_DATASET}"
    task_dir = repos[0].parent
    return Task(task_dir.parent.name, int(task_dir.name.removeprefix("task")), task_dir, {})


def test_checkout_base_bundled_is_deterministic(tmp_path: Path) -> None:
    task = _bundled_task()
    sha1 = checkout_base(task, tmp_path / "a")
    sha2 = checkout_base(task, tmp_path / "b")
    assert sha1 == sha2
    assert len(sha1) == 40
    assert git(tmp_path / "a", "status", "--porcelain") == ""
    assert git(tmp_path / "a", "log", "--format=%an %ae %at %cn %ct %s") == (
        "coop-dag coop-dag@localhost 1767225600 coop-dag 1767225600 base"
    )
    # The sha depends on the sources only: not on where the task lives, nor on bytecode junk.
    moved = tmp_path / "elsewhere" / task.repo / f"task{task.task_id}"
    shutil.copytree(task.bundled_source, moved / "repo")
    write(moved / "repo" / "__pycache__" / "x.cpython-311.pyc", "junk")
    write(moved / "repo" / ".pytest_cache" / "README.md", "junk")
    assert checkout_base(Task(task.repo, task.task_id, moved, {}), tmp_path / "c") == sha1


def test_checkout_base_refuses_non_empty_dest(tmp_path: Path) -> None:
    task = _bundled_task()
    dest = tmp_path / "dest"
    write(dest / "keep.txt", "mine")
    with pytest.raises(TaskError, match="not empty"):
        checkout_base(task, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    # An existing empty directory is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert checkout_base(task, empty) == checkout_base(task, tmp_path / "fresh")


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_dataset_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for call in (
        lambda: discover_tasks(missing),
        lambda: discover_pairs(missing),
        lambda: load_subset(missing, "lite"),
        lambda: task_pool_summary(missing, []),
    ):
        with pytest.raises(TaskError, match=str(missing)):
            call()
    write(tmp_path / "file", "x")
    with pytest.raises(TaskError, match="not a directory"):
        discover_tasks(tmp_path / "file")


def test_missing_feature_md(dataset: Path) -> None:
    md = dataset / "gamma_task" / "task3" / "feature2" / "feature.md"
    md.unlink()
    with pytest.raises(TaskError, match=f"missing feature.md: {md}"):
        discover_tasks(dataset)
    with pytest.raises(TaskError, match="missing feature.md"):
        load_feature("gamma_task", 3, md.parent)


def test_task_with_fewer_than_two_features(dataset: Path) -> None:
    shutil.rmtree(dataset / "gamma_task" / "task3" / "feature2")
    with pytest.raises(TaskError) as exc:
        discover_pairs(dataset)
    assert "gamma_task/3" in str(exc.value) and str(dataset / "gamma_task" / "task3") in str(
        exc.value
    )
    shutil.rmtree(dataset / "gamma_task" / "task3" / "feature1")
    with pytest.raises(TaskError, match="0 feature"):
        discover_tasks(dataset)


def test_badly_named_dirs(dataset: Path) -> None:
    (dataset / "gamma_task" / "taskX").mkdir()
    with pytest.raises(TaskError, match="taskX"):
        discover_tasks(dataset)
    shutil.rmtree(dataset / "gamma_task" / "taskX")
    add_feature(dataset / "gamma_task" / "task3", 3).rename(
        dataset / "gamma_task" / "task3" / "feature_x"
    )
    with pytest.raises(TaskError, match="feature_x"):
        discover_tasks(dataset)


def test_unknown_repo_filter(dataset: Path) -> None:
    with pytest.raises(TaskError, match="delta_task"):
        discover_tasks(dataset, repos=["alpha_task", "delta_task"])
    with pytest.raises(TaskError, match="notes"):
        discover_pairs(dataset, repos=["notes"])  # not a *_task directory


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "expected an object"),
        ('{"name": "lite"}', "missing key 'tasks'"),
        ('{"tasks": {"repo": "alpha_task"}}', "tasks: expected a list"),
        ('{"tasks": ["alpha_task"]}', r"tasks\[0\]: expected an object"),
        ('{"tasks": [{"task_id": 1}]}', r"tasks\[0\]: missing key 'repo'"),
        ('{"tasks": [{"repo": "alpha_task"}]}', "missing key 'task_id'"),
        ('{"tasks": [{"repo": 5, "task_id": 1}]}', r"tasks\[0\]\.repo"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": "1"}]}', r"tasks\[0\]\.task_id"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": true}]}', r"tasks\[0\]\.task_id"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": 1, "pairs": [1, 2]}]}', r"pairs\[0\]"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": 1, "pairs": [[1, 2, 3]]}]}', r"pairs\[0\]"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": 1, "pairs": [[1, "2"]]}]}', r"pairs\[0\]"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": 1, "pairs": [[2, 2]]}]}', "distinct"),
        ('{"tasks": [{"repo": "alpha_task", "task_id": 1, "pairs": "1,2"}]}', r"\.pairs"),
        (
            '{"tasks": [{"repo": "alpha_task", "task_id": 1},'
            ' {"repo": "alpha_task", "task_id": 1}]}',
            "listed twice",
        ),
        ('{"description": 3, "tasks": []}', "description"),
    ],
)
def test_malformed_subset(dataset: Path, content: str, needle: str) -> None:
    path = write(dataset / "subsets" / "bad.json", content)
    with pytest.raises(TaskError, match=needle) as exc:
        load_subset(dataset, "bad")
    assert str(path) in str(exc.value)
    with pytest.raises(TaskError):
        discover_pairs(dataset, subset="bad")


def test_missing_subset(dataset: Path) -> None:
    with pytest.raises(TaskError) as exc:
        load_subset(dataset, "huge")
    assert "huge" in str(exc.value) and str(dataset / "subsets" / "huge.json") in str(exc.value)
    assert "lite" in str(exc.value)  # lists what is available
    with pytest.raises(TaskError, match="huge"):
        discover_pairs(dataset, subset="huge")
    with pytest.raises(TaskError, match="invalid subset name"):
        load_subset(dataset, "..")
    # With a path separator or a .json suffix it is a file, wherever it lives.
    with pytest.raises(TaskError, match=r"subset file not found: \.\./lite"):
        load_subset(dataset, "../lite")


def test_subset_file_anywhere(dataset: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "mine.json"
    write(
        elsewhere, json.dumps({"tasks": [{"repo": "beta_task", "task_id": 7, "pairs": [[1, 2]]}]})
    )
    sub = load_subset(dataset, str(elsewhere))
    assert sub.name == "mine" and sub.path == elsewhere
    assert ids(discover_pairs(dataset, subset=str(elsewhere))) == ["beta_task/7/f1_f2"]


@pytest.mark.parametrize(
    ("entry", "needles"),
    [
        (
            {"repo": "alpha_task", "task_id": 1, "pairs": [[1, 4]]},
            ["alpha_task/1", "[1, 4]", "[4]"],
        ),
        ({"repo": "alpha_task", "task_id": 9, "pairs": [[1, 2]]}, ["alpha_task/9"]),
        ({"repo": "delta_task", "task_id": 1, "pairs": [[1, 2]]}, ["delta_task"]),
    ],
)
def test_subset_lists_missing_pair(dataset: Path, entry: dict, needles: list[str]) -> None:
    path = write(
        dataset / "subsets" / "stale.json", json.dumps({"name": "stale", "tasks": [entry]})
    )
    sub = load_subset(dataset, "stale")  # well-formed ...
    with pytest.raises(TaskError) as exc:  # ... but names something the dataset lacks
        discover_pairs(dataset, subset=sub)
    for needle in [str(path), *needles]:
        assert needle in str(exc.value)


def test_malformed_manifest(dataset: Path) -> None:
    task = discover_tasks(dataset, repos=["beta_task"])[0]
    assert load_manifest(task)["merges"]["f1_f10"] == "conflicts"
    assert load_manifest(discover_tasks(dataset, repos=["gamma_task"])[0]) is None
    for bad, needle in [
        ("{", "invalid JSON"),
        ('{"merges": {"f1_f2": "maybe"}}', "maybe"),
        ('{"merges": {"one-two": "clean"}}', "one-two"),
        ('{"repo": "gamma_task", "merges": {}}', "gamma_task"),
    ]:
        write(task.manifest_path, bad)
        with pytest.raises(TaskError, match=needle) as exc:
            task_pool_summary(dataset, RepoSplit(), check_patches=False)
        assert str(task.manifest_path) in str(exc.value)
