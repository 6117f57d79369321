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
from coop_dag.tasks import BASE_GIT_ENV

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
