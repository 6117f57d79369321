"""coop_dag.eval.evaluate: CooperBench's coop eval.json for a pair, on a task built here (gold
patches generated with git) and, when present, on the bundled dataset's manifests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from coop_dag import BUNDLED_DATASET, PACKAGE_DIR
from coop_dag.agent.sandbox.bwrap import bwrap_status
from coop_dag.dataset.base_repo import BASE_GIT_ENV, checkout_base
from coop_dag.dataset.discovery import load_task
from coop_dag.dataset.tasks import Pair, Task
from coop_dag.eval.evaluate import evaluate_pair, parse_pytest_summary, write_eval
from coop_dag.eval.merge import filter_test_files

BWRAP_OK, BWRAP_INFO = bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unusable: {BWRAP_INFO}")

# CooperBench's eval.json keys for the coop setting (cooperbench/eval/evaluate.py).
EVAL_KEYS = {
    "repo", "task_id", "features", "setting", "apply_status", "merge", "feature1", "feature2",
    "both_passed", "error", "evaluated_at",
}  # fmt: skip
FEATURE_KEYS = {"feature_id", "passed", "exit_code", "tests_passed", "tests_failed", "test_output"}

CORE = '''\
"""Tiny arithmetic helpers."""


def add(a, b):
    """Return a + b."""
    return a + b


def sub(a, b):
    """Return a - b."""
    return a - b


def mul(a, b):
    """Return a * b."""
    return a * b


def neg(a):
    """Return -a."""
    return -a


def clamp(x, lo, hi):
    """Clamp x into [lo, hi]."""
    return max(lo, min(x, hi))
'''

# feature id -> (edit of core.py as (old, new), new test file body)
FEATURES = {
    1: (
        (
            '    """Return a + b."""\n    return a + b\n',
            '    """Return a + b; numbers only."""\n'
            "    if not all(isinstance(v, (int, float)) for v in (a, b)):\n"
            '        raise TypeError("add() takes numbers")\n'
            "    return a + b\n",
        ),
        "import pytest\n\nfrom calc import add\n\n\n"
        "def test_add_rejects_strings():\n    with pytest.raises(TypeError):\n"
        "        add('1', '2')\n\n\ndef test_add_numbers():\n    assert add(2, 3) == 5\n",
    ),
    2: (
        (
            '    """Clamp x into [lo, hi]."""\n    return max(lo, min(x, hi))\n',
            '    """Clamp x into [lo, hi]; reversed bounds are swapped."""\n'
            "    if lo > hi:\n        lo, hi = hi, lo\n"
            "    return max(lo, min(x, hi))\n",
        ),
        "from calc import clamp\n\n\n"
        "def test_clamp_swaps_reversed_bounds():\n    assert clamp(5, 10, 0) == 5\n"
        "    assert clamp(-3, 10, 0) == 0\n",
    ),
    3: (  # edits the same lines as feature 1: conflicts with it
        (
            '    """Return a + b."""\n    return a + b\n',
            '    """Return a + b, rounded to 6 places."""\n    return round(a + b, 6)\n',
        ),
        "from calc import add\n\n\ndef test_add_rounds():\n    assert add(0.1, 0.2) == 0.3\n",
    ),
}


def _git(cwd: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
        env={**os.environ, **BASE_GIT_ENV, **(env or {})},
    ).stdout  # fmt: skip


def make_task(root: Path) -> Task:
    """calc_task/task1 in the bundled layout, features 1-3 with git-made patches."""
    task_dir = root / "calc_task" / "task1"
    repo = task_dir / "repo"
    (repo / "src" / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "src" / "calc" / "__init__.py").write_text(
        "from calc.core import add, clamp, mul, neg, sub\n"
    )
    (repo / "src" / "calc" / "core.py").write_text(CORE)
    (repo / "tests" / "test_core.py").write_text(
        "from calc import add, clamp, mul\n\n\ndef test_basics():\n"
        "    assert add(1, 2) == 3\n    assert mul(2, 3) == 6\n    assert clamp(5, 0, 3) == 3\n"
    )
    shutil.copyfile(PACKAGE_DIR / "bundled" / "runner_template.sh", task_dir / "runner.sh")

    build = root / "_build"
    shutil.copytree(repo, build)
    _git(build, "init", "-q", "-b", "main")
    _git(build, "add", "-A")
    _git(build, "commit", "-q", "-m", "base")
    core = build / "src" / "calc" / "core.py"
    for fid, ((old, new), test_body) in FEATURES.items():
        fdir = task_dir / f"feature{fid}"
        fdir.mkdir()
        (fdir / "feature.md").write_text(
            f"**Title**: feature {fid}\n\n**Files Modified**\n- `src/calc/core.py`\n"
        )
        assert old in CORE
        core.write_text(CORE.replace(old, new))
        (fdir / "feature.patch").write_text(_git(build, "diff"))
        _git(build, "checkout", "-q", "--", ".")
        (build / "tests" / f"test_feature{fid}.py").write_text(test_body)
        _git(build, "add", "-A")
        (fdir / "tests.patch").write_text(_git(build, "diff", "--cached"))
        _git(build, "reset", "-q", "--hard")
    shutil.rmtree(build)
    return load_task("calc_task", task_dir)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    return make_task(tmp_path_factory.mktemp("dataset"))


def gold(task: Task, fid: int) -> str:
    return task.features[fid].feature_patch.read_text()


def variant(task: Task, where: Path, fid: int, old: str, new: str) -> str:
    """Feature `fid`'s gold patch with `old` replaced by `new` in core.py, made by git."""
    repo = where / f"variant-{uuid.uuid4().hex[:8]}"
    checkout_base(task, repo)
    _git(repo, "apply", str(task.features[fid].feature_patch))
    core = repo / "src" / "calc" / "core.py"
    assert old in core.read_text()
    core.write_text(core.read_text().replace(old, new))
    return _git(repo, "diff")


def pair(task: Task, a: int, b: int) -> Pair:
    return Pair(task, task.repo, task.task_id, a, b)


def check_shape(result: dict) -> None:
    assert set(result) == EVAL_KEYS
    assert result["setting"] == "coop"
    assert set(result["feature1"]) == FEATURE_KEYS and set(result["feature2"]) == FEATURE_KEYS
    assert set(result["merge"]) == {"status", "strategy", "diff"}
    assert set(result["apply_status"]) == {"agent1", "agent2"}
    json.dumps(result)  # serialisable


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("..F.\n1 failed, 3 passed in 0.12s\n", {"passed": 3, "failed": 1}),
        ("=========== 2 passed, 1 warning in 0.01s ===========", {"passed": 2, "failed": 0}),
        ("1 failed, 2 passed, 1 error in 1.50s", {"passed": 2, "failed": 2}),
        (
            "!!! Interrupted: 2 errors during collection !!!\n2 errors in 0.19s\n",
            {"passed": 0, "failed": 2},
        ),
        (
            "def test_prints():\n    print('99 passed')\n5 passed, 2 skipped in 0.3s\n",
            {"passed": 5, "failed": 0},
        ),
        ("error: failed to apply patch: tests1.patch\n", {"passed": 0, "failed": 0}),
        ("", {"passed": 0, "failed": 0}),
    ],
)
def test_parse_pytest_summary(output: str, expected: dict) -> None:
    assert parse_pytest_summary(output) == expected


def test_filter_test_files_drops_test_sections() -> None:
    src = (
        "diff --git a/src/calc/core.py b/src/calc/core.py\n--- a/src/calc/core.py\n"
        "+++ b/src/calc/core.py\n@@ -1 +1 @@\n-x\n+y\n"
    )
    tests = (
        "diff --git a/tests/test_x.py b/tests/test_x.py\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/tests/test_x.py\n@@ -0,0 +1 @@\n+z\n"
    )
    assert filter_test_files(src + tests) == src
    assert filter_test_files(tests + src) == src
    assert filter_test_files(tests) == ""
    assert filter_test_files("") == ""


def test_write_eval_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "coop" / "calc_task" / "1" / "f1_f2" / "eval.json"
    write_eval(path, {"both_passed": True})
    assert json.loads(path.read_text()) == {"both_passed": True}
    write_eval(path, {"both_passed": False, "unicode": "✓"})
    assert json.loads(path.read_text()) == {"both_passed": False, "unicode": "✓"}
    with pytest.raises(TypeError):
        write_eval(path, {"bad": object()})
    # a failed write leaves the previous file intact and no temp files behind
    assert json.loads(path.read_text())["both_passed"] is False
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]


def test_missing_tests_patch_is_an_error_result(task: Task, tmp_path: Path) -> None:
    broken = tmp_path / "calc_task" / "task1"
    shutil.copytree(task.dir, broken)
    (broken / "feature2" / "tests.patch").unlink()
    t = load_task("calc_task", broken)
    result = evaluate_pair(pair(t, 1, 2), gold(t, 1), gold(t, 2), tmp_path / "work")
    check_shape(result)
    assert "Tests patch not found" in result["error"] and not result["both_passed"]


# --------------------------------------------------------------------------- evaluation


@needs_bwrap
def test_clean_merge_of_gold_patches_passes_both(task: Task, tmp_path: Path) -> None:
    result = evaluate_pair(pair(task, 1, 2), gold(task, 1), gold(task, 2), tmp_path / "work")
    check_shape(result)
    assert result["error"] is None
    assert result["apply_status"] == {"agent1": "applied", "agent2": "applied"}
    assert result["merge"]["status"] == "clean" and result["merge"]["strategy"] == "naive"
    assert (
        "raise TypeError" in result["merge"]["diff"]
        and "lo, hi = hi, lo" in result["merge"]["diff"]
    )
    f1, f2 = result["feature1"], result["feature2"]
    assert (f1["feature_id"], f2["feature_id"]) == (1, 2)
    assert f1["passed"] and f2["passed"] and result["both_passed"]
    assert (f1["tests_passed"], f1["tests_failed"]) == (3, 0)  # test_core + 2 feature-1 tests
    assert (f2["tests_passed"], f2["tests_failed"]) == (2, 0)
    assert f1["exit_code"] == 0
    assert list((tmp_path / "work").iterdir()) == []  # work dir cleaned up
    # tests run on the merged tree: which agent wrote which feature does not matter
    swapped = evaluate_pair(pair(task, 1, 2), gold(task, 2), gold(task, 1), tmp_path / "work")
    assert swapped["merge"]["status"] == "clean" and swapped["both_passed"]


@needs_bwrap
def test_one_feature_missing_fails_its_tests(task: Task, tmp_path: Path) -> None:
    # agent2 submitted nothing: the pair is missing input and feature 1's tests fail
    result = evaluate_pair(pair(task, 2, 1), gold(task, 2), "", tmp_path / "work")
    check_shape(result)
    assert result["apply_status"] == {"agent1": "applied", "agent2": "skipped"}
    assert result["merge"]["status"] == "missing_input"
    assert result["feature1"]["passed"]
    f2 = result["feature2"]
    assert not f2["passed"] and f2["tests_failed"] >= 1 and f2["exit_code"] != 0
    assert not result["both_passed"]


@needs_bwrap
def test_conflicting_patches_are_conflicts(task: Task, tmp_path: Path) -> None:
    result = evaluate_pair(pair(task, 1, 3), gold(task, 1), gold(task, 3), tmp_path / "work")
    check_shape(result)
    assert result["apply_status"] == {"agent1": "applied", "agent2": "applied"}
    assert result["merge"]["status"] == "conflicts"
    # CooperBench's fallback: the union merge keeps both sides so tests can still run
    assert result["merge"]["strategy"] == "union"
    assert result["error"] is None
    assert result["feature1"]["tests_passed"] + result["feature1"]["tests_failed"] > 0

    strict = evaluate_pair(
        pair(task, 1, 3), gold(task, 1), gold(task, 3), tmp_path / "work", union_fallback=False
    )
    check_shape(strict)
    assert strict["merge"]["status"] == "conflicts" and strict["error"]
    assert not strict["both_passed"]


@needs_bwrap
def test_patch_that_does_not_apply_is_missing_input(task: Task, tmp_path: Path) -> None:
    bogus = (
        "diff --git a/src/calc/core.py b/src/calc/core.py\n--- a/src/calc/core.py\n"
        "+++ b/src/calc/core.py\n@@ -1,3 +1,3 @@\n-no such line\n+replacement\n context\n"
    )
    result = evaluate_pair(pair(task, 1, 2), gold(task, 1), bogus, tmp_path / "work")
    check_shape(result)
    assert result["error"] is None
    assert result["apply_status"] == {"agent1": "applied", "agent2": "failed"}
    assert result["merge"]["status"] == "missing_input"
    assert result["feature1"]["passed"] and not result["feature2"]["passed"]
    assert not result["both_passed"]

    garbage = evaluate_pair(pair(task, 1, 2), "not a patch at all", "  \n", tmp_path / "work")
    check_shape(garbage)
    assert garbage["apply_status"] == {"agent1": "failed", "agent2": "skipped"}
    assert garbage["merge"]["status"] == "missing_input"
    assert not garbage["both_passed"]


@needs_bwrap
def test_identical_patches(task: Task, tmp_path: Path) -> None:
    result = evaluate_pair(pair(task, 1, 2), gold(task, 1), gold(task, 1), tmp_path / "work")
    check_shape(result)
    assert result["merge"]["status"] == "identical"
    assert result["feature1"]["passed"] and not result["feature2"]["passed"]


@needs_bwrap
def test_agent_test_files_are_filtered(task: Task, tmp_path: Path) -> None:
    # an agent that also added the very test file tests.patch creates
    with_tests = gold(task, 1) + task.features[1].tests_patch.read_text()
    result = evaluate_pair(pair(task, 1, 2), with_tests, gold(task, 2), tmp_path / "work")
    assert result["apply_status"]["agent1"] == "applied"
    assert result["merge"]["status"] == "clean" and result["both_passed"]


@needs_bwrap
def test_tests_run_inside_the_sandbox(task: Task, tmp_path: Path) -> None:
    """Merged code runs with a read-only root and no network, like agent commands."""
    host_marker = Path.home() / f".coop-dag-eval-probe-{uuid.uuid4().hex}"  # not under /tmp
    evil = variant(
        task,
        tmp_path,
        2,
        "    if lo > hi:\n",
        f"    open({str(host_marker)!r}, 'w').write('escaped')\n    if lo > hi:\n",
    )
    try:
        result = evaluate_pair(pair(task, 1, 2), gold(task, 1), evil, tmp_path / "work")
        assert result["apply_status"]["agent2"] == "applied"
        assert not host_marker.exists()
        assert not result["feature2"]["passed"]
        assert "Read-only file system" in result["feature2"]["test_output"]
    finally:
        host_marker.unlink(missing_ok=True)


@needs_bwrap
def test_code_under_test_cannot_rewrite_the_other_features_tests(
    task: Task, tmp_path: Path
) -> None:
    # At import, agent1's code tries to blank tests2.patch (an empty tests patch would make
    # feature 2 "pass" on the base tests alone) and the runner.
    sneaky = variant(
        task, tmp_path, 1, '"""Tiny arithmetic helpers."""\n',
        '"""Tiny arithmetic helpers."""\nimport os\n\n'
        "for _name in ('tests2.patch', 'runner.sh'):\n"
        "    try:\n"
        "        open(os.path.join(os.environ['PATCH_DIR'], _name), 'w').close()\n"
        "    except OSError as exc:\n"
        "        print('blocked:', exc)\n",
    )  # fmt: skip
    result = evaluate_pair(pair(task, 1, 2), sneaky, gold(task, 2), tmp_path / "work")
    assert result["apply_status"] == {"agent1": "applied", "agent2": "applied"}
    assert result["feature1"]["passed"]
    f2 = result["feature2"]
    assert (f2["tests_passed"], f2["tests_failed"]) == (2, 0)  # feature 2's test still ran


@needs_bwrap
def test_hanging_tests_are_killed(task: Task, tmp_path: Path) -> None:
    hang = variant(  # hangs on reversed bounds only: feature 1's run is unaffected
        task, tmp_path, 2, "        lo, hi = hi, lo\n", "        while True:\n            pass\n"
    )
    result = evaluate_pair(pair(task, 1, 2), gold(task, 1), hang, tmp_path / "work", timeout=5)
    check_shape(result)
    assert result["feature1"]["passed"]
    f2 = result["feature2"]
    assert not f2["passed"] and f2["exit_code"] == -1
    assert "timed out after 5 seconds" in f2["test_output"]


@needs_bwrap
def test_eval_json_round_trip(task: Task, tmp_path: Path) -> None:
    result = evaluate_pair(pair(task, 1, 2), gold(task, 1), gold(task, 2), tmp_path / "work")
    path = write_eval(tmp_path / "run" / "coop" / "calc_task" / "1" / "f1_f2" / "eval.json", result)
    assert json.loads(path.read_text()) == result


# --------------------------------------------------------------------------- bundled tasks


def _bundled_tasks_with_manifests() -> list[Task]:
    tasks = []
    if not BUNDLED_DATASET.is_dir():
        return tasks
    for repo_dir in sorted(BUNDLED_DATASET.glob("*_task")):
        for task_dir in sorted(repo_dir.glob("task*")):
            if (task_dir / "manifest.json").is_file() and (task_dir / "runner.sh").is_file():
                try:
                    tasks.append(load_task(repo_dir.name, task_dir))
                except Exception:  # being authored concurrently; not ours to judge here
                    continue
    return tasks[:2]


@needs_bwrap
@pytest.mark.slow
@pytest.mark.parametrize("bundled", _bundled_tasks_with_manifests(), ids=lambda t: t.key)
def test_bundled_gold_pairs_match_manifest(bundled: Task, tmp_path: Path) -> None:
    merges = json.loads((bundled.dir / "manifest.json").read_text())["merges"]
    picked = {}
    for key, status in merges.items():
        picked.setdefault(status, key)
    for status, key in picked.items():
        a, b = (int(x[1:]) for x in key.split("_"))
        result = evaluate_pair(pair(bundled, a, b), gold(bundled, a), gold(bundled, b), tmp_path)
        check_shape(result)
        assert result["merge"]["status"] == status, (key, result["merge"])
        if status == "clean":
            assert result["both_passed"], (key, result["feature1"], result["feature2"])
