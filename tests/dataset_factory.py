"""Small CooperBench-format datasets written into a tmp dir, bundled style (`task<N>/repo/`,
the bundled runner, real patches made with git), for tests of task discovery, the task pool,
the dataset config and `coop-dag dataset validate/manifest`.

Each repository `<name>_task` gets `task1` with a tiny `calc` package and three features:
f1 and f2 both append a function at the end of `src/calc/ops.py` (their gold merge conflicts),
f3 edits `src/calc/util.py` (clean with both). Each feature's tests.patch adds one failing
test file that its feature.patch makes pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from coop_dag import PACKAGE_DIR
from coop_dag.dataset.base_repo import BASE_GIT_ENV

RUNNER_TEMPLATE = PACKAGE_DIR / "bundled" / "runner_template.sh"

BASE = {
    "src/calc/__init__.py": '"""calc."""\n',
    "src/calc/ops.py": "def add(a, b):\n    return a + b\n",
    "src/calc/util.py": "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
    "tests/test_base.py": (
        "from calc.ops import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    ),
}
FEATURES = {
    1: (
        "Double",
        {"src/calc/ops.py": BASE["src/calc/ops.py"] + "\n\ndef double(x):\n    return 2 * x\n"},
        "from calc.ops import double\n\n\ndef test_double():\n    assert double(4) == 8\n",
    ),
    2: (
        "Triple",
        {"src/calc/ops.py": BASE["src/calc/ops.py"] + "\n\ndef triple(x):\n    return 3 * x\n"},
        "from calc.ops import triple\n\n\ndef test_triple():\n    assert triple(2) == 6\n",
    ),
    3: (
        "Wrap",
        {"src/calc/util.py": BASE["src/calc/util.py"] + "\n\ndef wrap(x, n):\n    return x % n\n"},
        "from calc.util import wrap\n\n\ndef test_wrap():\n    assert wrap(7, 5) == 2\n",
    ),
}
MERGES = {"f1_f2": "conflicts", "f1_f3": "clean", "f2_f3": "clean"}

FEATURE_MD = """**Title**: {title}

**Pull Request Details**

**Description**:
Add `{func}` (see the example in script.py and data.txt; helpers live in `util.py`).

**Technical Background**:
The package is tiny; `file1.txt` is only an example name.

**Solution**:
1. Add `{func}` to `{path}`.

**Files Modified**
- `{path}`
"""


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **BASE_GIT_ENV}
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(k, None)
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def diff_of(changes: dict[str, str]) -> str:
    """A `git diff` (a/ b/ prefixes) of `changes` applied to BASE."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for rel, text in BASE.items():
            write(repo / rel, text)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--no-gpg-sign", "-m", "base")
        for rel, text in changes.items():
            write(repo / rel, text)
        _git(repo, "add", "-A")
        return _git(repo, "diff", "--cached")


def add_task(root: Path, repo: str, task_id: int = 1, *, manifest: bool = True) -> Path:
    task_dir = root / repo / f"task{task_id}"
    for rel, text in BASE.items():
        write(task_dir / "repo" / rel, text)
    shutil.copyfile(RUNNER_TEMPLATE, task_dir / "runner.sh")
    for fid, (title, changes, test) in FEATURES.items():
        fdir = task_dir / f"feature{fid}"
        (path,) = changes
        func = title.lower()
        write(fdir / "feature.md", FEATURE_MD.format(title=title, func=func, path=path))
        write(fdir / "feature.patch", diff_of(changes))
        write(fdir / "tests.patch", diff_of({f"tests/test_feature{fid}_{func}.py": test}))
    if manifest:
        write(
            task_dir / "manifest.json",
            json.dumps(
                {"repo": repo, "task_id": task_id, "features": [1, 2, 3], "merges": MERGES},
                indent=2,
            )
            + "\n",
        )
    return task_dir


def make_dataset(root: Path, repos: tuple[str, ...] = ("alpha_task", "beta_task")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for repo in repos:
        add_task(root, repo)
    return root


# --------------------------------------------------------------------------- Docker layout

DOCKER_PYPROJECT = """[project]
name = "calc"
version = "0.1.0"
dependencies = []

[project.optional-dependencies]
test = ["pytest"]
"""

# CooperBench's runner shape (dataset/dspy_task/task8394/runner.sh): the image's checkout at
# /workspace/repo, patches under /patches, `pip install -e` of the repository, pytest on the
# files the test patch names.
DOCKER_RUNNER = """#!/bin/bash
set -e
cleanup() { git reset --hard HEAD || true; git clean -fdx || true; }
trap cleanup EXIT INT TERM
TEST_PATCH="$1"
FEATURE_PATCH="$2"
cd /workspace/repo
git reset --hard HEAD
git clean -fdx
git apply "/patches/$TEST_PATCH"
if [[ -n "$FEATURE_PATCH" ]]; then git apply "/patches/$FEATURE_PATCH"; fi
pip install --upgrade pip
pip install -e ".[test]"
PATCH_TARGETS=$(grep -oE '^\\+\\+\\+ b/.*' "/patches/$TEST_PATCH" | sed 's|^+++ b/||' | sort -u)
timeout 300 python -m pytest tests/test_base.py $PATCH_TARGETS -v --tb=short
"""

DOCKERFILE = """FROM python:3.11-slim
RUN apt-get update && apt-get install -y git && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace
RUN git clone {url} repo && \\
    cd repo && \\
    git checkout {sha}
WORKDIR /workspace/repo
RUN pip install --upgrade pip && \\
    pip install -e ".[test]"
COPY runner.sh /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/runner.sh"]
"""


def make_mirror(mirror_dir: Path, owner: str = "example", name: str = "calc") -> tuple[str, str]:
    """A bare git mirror `<mirror_dir>/<owner>/<name>.git` of BASE plus a static
    pyproject.toml; returns `(clone url, sha)`."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rel, text in {**BASE, "pyproject.toml": DOCKER_PYPROJECT}.items():
            write(work / rel, text)
        _git(work, "init", "-q", "-b", "main")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "--no-gpg-sign", "-m", "base")
        sha = _git(work, "rev-parse", "HEAD").strip()
        bare = mirror_dir / owner / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git(mirror_dir, "clone", "-q", "--bare", str(work), str(bare))
    return f"https://github.com/{owner}/{name}.git", sha


def add_docker_task(
    root: Path, mirror_dir: Path, repo: str = "calc_task", task_id: int = 1
) -> Path:
    """A real-task-shaped task: Dockerfile (clone + checkout + `pip install -e ".[test]"`),
    a runner that expects CooperBench's image, no bundled source; the base in `mirror_dir`."""
    url, sha = make_mirror(mirror_dir)
    task_dir = root / repo / f"task{task_id}"
    write(task_dir / "Dockerfile", DOCKERFILE.format(url=url, sha=sha))
    write(task_dir / "runner.sh", DOCKER_RUNNER)
    for fid, (title, changes, test) in FEATURES.items():
        fdir = task_dir / f"feature{fid}"
        (path,) = changes
        func = title.lower()
        write(fdir / "feature.md", FEATURE_MD.format(title=title, func=func, path=path))
        write(fdir / "feature.patch", diff_of(changes))
        write(fdir / "tests.patch", diff_of({f"tests/test_feature{fid}_{func}.py": test}))
    return task_dir
