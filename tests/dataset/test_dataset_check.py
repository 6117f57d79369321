"""`coop-dag dataset validate/manifest` and the task checks `task_pool` runs, on small
datasets built in tmp dirs (tests/dataset_factory.py), plus the task_pool and teacher_rollouts
assets on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dataset_factory import MERGES, add_task, make_dataset, write

from coop_dag.cli import main
from coop_dag.dataset.check import validate_dataset
from coop_dag.dataset.discovery import load_task
from coop_dag.dataset.manifests import compute_manifest, write_manifests
from coop_dag.dataset.pool import check_task, require_pairs, require_train_pairs, task_pool_summary
from coop_dag.dataset.tasks import RepoSplit, TaskError

NOT_APPLYING = """diff --git a/src/calc/ops.py b/src/calc/ops.py
--- a/src/calc/ops.py
+++ b/src/calc/ops.py
@@ -1,2 +1,3 @@
 def subtract(a, b):
     return a - b
+# nope
"""


def findings(report, level: str = "error") -> list[tuple[str, str]]:
    return sorted((f.where, f.rule) for f in report.findings if f.level == level)


# ---------------------------------------------------------------------------------------------
# the checks task_pool runs


def test_check_task_names_each_unusable_feature(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task",))
    task_dir = root / "alpha_task" / "task1"
    assert check_task(load_task("alpha_task", task_dir)) == {}
    (task_dir / "feature1" / "feature.patch").unlink()
    write(task_dir / "feature2" / "feature.patch", NOT_APPLYING)
    write(task_dir / "feature3" / "tests.patch", "   \n")
    problems = check_task(load_task("alpha_task", task_dir))
    assert set(problems) == {1, 2, 3}
    assert problems[1] == [f"missing feature.patch ({task_dir / 'feature1' / 'feature.patch'})"]
    assert problems[2][0].startswith("feature.patch does not apply to the base: ")
    assert "src/calc/ops.py" in problems[2][0]
    assert problems[3][0].startswith("empty tests.patch")
    (task_dir / "runner.sh").unlink()
    assert check_task(load_task("alpha_task", task_dir), features=[])[None] == [
        f"missing runner.sh ({task_dir / 'runner.sh'})"
    ]


def test_task_pool_summary_rejects_exactly_the_unusable_pairs(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task", "beta_task", "gamma_task"))
    (root / "alpha_task" / "task1" / "feature1" / "feature.patch").unlink()
    (root / "beta_task" / "task1" / "runner.sh").unlink()
    split = RepoSplit(validation=["gamma_task"], test=[])
    summary = task_pool_summary(root, split)
    assert [p["pair_id"] for p in summary["pairs"]] == [
        "alpha_task/1/f2_f3",  # f1_f2 and f1_f3 go with feature1
        "gamma_task/1/f1_f2",
        "gamma_task/1/f1_f3",
        "gamma_task/1/f2_f3",
    ]
    assert summary["n_rejected_pairs"] == 5
    assert [r["where"] for r in summary["rejected"]] == ["alpha_task/1/feature1", "beta_task/1"]
    assert "missing feature.patch" in summary["rejected"][0]["reason"]
    assert "missing runner.sh" in summary["rejected"][1]["reason"]
    # Unchecked, everything stays (the pre-check behaviour).
    assert task_pool_summary(root, split, check_patches=False)["n_pairs"] == 9
    # Nothing usable at all is an error naming why.
    for repo in ("alpha_task", "gamma_task"):
        (root / repo / "task1" / "runner.sh").unlink()
    with pytest.raises(TaskError, match="no task of .* passed the task checks: .*runner.sh"):
        task_pool_summary(root, split)


def test_task_check_reads_a_mirror_without_writing_to_it(tmp_path: Path) -> None:
    """A real task's patches are checked against its Dockerfile commit in the mirror, through a
    temporary index: the mirror is not cloned and not written to."""
    from test_tasks import DOCKERFILE, FEATURE_PATCH, TESTS_PATCH, UPSTREAM_FILES_V1, git

    up = tmp_path / "upstream"
    for rel, text in UPSTREAM_FILES_V1.items():
        write(up / rel, text)
    git(up, "init", "-q", "-b", "main")
    git(up, "add", "-A")
    git(up, "commit", "-q", "--no-gpg-sign", "-m", "v1")
    sha = git(up, "rev-parse", "HEAD")
    mirror = tmp_path / "mirrors" / "acme" / "widget.git"
    git(tmp_path, "clone", "-q", "--bare", str(up), str(mirror))
    task_dir = tmp_path / "ds" / "widget_task" / "task1"
    write(task_dir / "Dockerfile", DOCKERFILE.format(sha=sha))
    write(task_dir / "runner.sh", "#!/bin/bash\n")
    for fid in (1, 2):
        write(
            task_dir / f"feature{fid}" / "feature.md",
            "**Files Modified**\n- `src/widget/core.py`\n",
        )
        write(task_dir / f"feature{fid}" / "feature.patch", FEATURE_PATCH)
        write(task_dir / f"feature{fid}" / "tests.patch", TESTS_PATCH)
    write(task_dir / "feature2" / "feature.patch", NOT_APPLYING)
    before = sorted(p.relative_to(mirror) for p in mirror.rglob("*"))
    problems = check_task(load_task("widget_task", task_dir), tmp_path / "mirrors")
    assert list(problems) == [2] and "does not apply" in problems[2][0]
    assert sorted(p.relative_to(mirror) for p in mirror.rglob("*")) == before
    # Without the mirror the whole task is rejected, saying so.
    (reason,) = check_task(load_task("widget_task", task_dir))[None]
    assert reason.startswith("base repository unavailable:") and "no mirror" in reason
    report = validate_dataset(tmp_path / "ds", run_tests=False)
    assert findings(report) == [("widget_task/1", "base")]
    report = validate_dataset(tmp_path / "ds", mirror_dir=tmp_path / "mirrors", run_tests=False)
    assert findings(report) == [("widget_task/1/feature2", "patches")]


def test_require_train_pairs_says_why_there_are_none(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task", "beta_task"))
    summary = task_pool_summary(root, RepoSplit(validation=["alpha_task"], test=["beta_task"]))
    with pytest.raises(TaskError) as exc:
        require_train_pairs(summary)
    msg = str(exc.value)
    assert msg.startswith(f"no training pairs in {root}: its 6 pair(s) are all in validation")
    assert "['alpha_task']" in msg and "['beta_task']" in msg
    summary = task_pool_summary(root, RepoSplit(test=["beta_task"]))
    assert require_train_pairs(summary) == [f"alpha_task/1/f{a}_f{b}" for a, b in MERGES_KEYS]
    with pytest.raises(TaskError, match=r"no validation pairs in .*repositories \[\]"):
        require_pairs(summary, "validation")
    sub = write(
        tmp_path / "only-alpha.json", json.dumps({"tasks": [{"repo": "alpha_task", "task_id": 1}]})
    )
    summary = task_pool_summary(root, RepoSplit(test=["beta_task"]), subset=str(sub))
    with pytest.raises(TaskError, match=r"no test pairs in .*subset .*only-alpha.json.*beta_task"):
        require_pairs(summary, "test")


MERGES_KEYS = [(1, 2), (1, 3), (2, 3)]


# ---------------------------------------------------------------------------------------------
# manifest


def test_manifest_is_computed_with_git(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task",))
    task = load_task("alpha_task", root / "alpha_task" / "task1")
    assert compute_manifest(task) == {
        "repo": "alpha_task",
        "task_id": 1,
        "features": [1, 2, 3],
        "merges": MERGES,
    }
    task.manifest_path.unlink()
    assert main(["dataset", "manifest", str(root), "--check"]) == 1
    assert not task.manifest_path.exists()
    assert main(["dataset", "manifest", str(root)]) == 0
    assert json.loads(task.manifest_path.read_text())["merges"] == MERGES
    assert main(["dataset", "manifest", str(root), "--check"]) == 0
    ((_, _, changed),) = write_manifests(root, dry_run=True)
    assert not changed


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_accepts_a_good_user_dataset(tmp_path: Path, capsys, monkeypatch) -> None:
    make_dataset(tmp_path / "ds", ("alpha_task",))
    monkeypatch.chdir(tmp_path)
    root = Path("ds")  # relative, as typed on a command line
    report = validate_dataset(root)
    assert report.ok, report.format()
    assert (report.tasks, report.features, report.bundled_rules) == (1, 3, False)
    # Bundled-only rules are warnings for a user's dataset: 3 features, not 4.
    assert findings(report, "warning") == [("alpha_task/1", "layout")]
    assert main(["dataset", "validate", str(root), "--no-tests"]) == 0
    assert "0 error(s), 1 warning(s)" in capsys.readouterr().out
    assert main(["dataset", "validate", str(root), "--no-tests", "--bundled-rules"]) == 1
    # ... and errors under the bundled rules.
    strict = validate_dataset(root, bundled=True, run_tests=False)
    assert ("alpha_task/1", "layout") in findings(strict)


def test_validate_reports_every_broken_rule(tmp_path: Path, capsys) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task",))
    alpha = root / "alpha_task" / "task1"
    # feature1's tests already pass on the base: they do not test the feature.
    write(
        alpha / "feature1" / "tests.patch",
        (alpha / "feature1" / "tests.patch")
        .read_text()
        .replace("import double", "import add")
        .replace("double(4) == 8", "add(4, 4) == 8"),
    )
    # feature3's gold patch does not make its tests pass.
    write(
        alpha / "feature3" / "feature.patch",
        (alpha / "feature3" / "feature.patch").read_text().replace("x % n", "x"),
    )
    # The manifest claims the conflicting pair merges cleanly.
    manifest = json.loads((alpha / "manifest.json").read_text())
    manifest["merges"]["f1_f2"] = "clean"
    write(alpha / "manifest.json", json.dumps(manifest))
    report = validate_dataset(root)
    assert findings(report) == [
        ("alpha_task/1", "manifest"),
        ("alpha_task/1/feature1", "tests-fail-without-feature"),
        ("alpha_task/1/feature3", "tests-pass-with-feature"),
    ]
    (manifest_error,) = [f for f in report.errors if f.rule == "manifest"]
    assert "f1_f2: manifest 'clean', git 'conflicts'" in manifest_error.message
    assert main(["dataset", "validate", str(root), "--json", "--no-tests"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == 1  # the manifest; tests not run
    # A missing manifest is only a warning for a user's dataset (merge status unknown).
    add_task(root, "beta_task", manifest=False)
    report = validate_dataset(root, run_tests=False)
    assert ("beta_task/1", "manifest") in findings(report, "warning")
    assert ("beta_task/1", "manifest") in findings(
        validate_dataset(root, run_tests=False, bundled=True)
    )


def test_validate_layout_patches_and_docker_runner(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", ("alpha_task", "beta_task", "gamma_task"))
    (root / "alpha_task" / "task1" / "feature2" / "feature.patch").unlink()
    write(root / "beta_task" / "task1" / "feature1" / "feature.patch", NOT_APPLYING)
    gamma = root / "gamma_task" / "task1"
    write(gamma / "runner.sh", "#!/bin/bash\ncd /workspace/repo\ngit apply $1\npytest\n")
    shutil.rmtree(root / "gamma_task" / "task1" / "feature3")
    (root / "gamma_task" / "task1" / "feature2" / "feature.md").unlink()  # task can't load
    add_task(root, "delta_task")
    write(root / "delta_task" / "task1" / "runner.sh", "#!/bin/bash\ncd /workspace/repo\n")
    subset = {"tasks": [{"repo": "x_task", "task_id": 1}, {"repo": "gamma_task", "task_id": 1}]}
    write(root / "subsets" / "broken.json", json.dumps(subset))
    report = validate_dataset(root)
    assert findings(report) == [
        ("alpha_task/1/feature2", "layout"),
        ("beta_task/1/feature1", "patches"),
        ("delta_task/1", "runner"),
        ("gamma_task/1", "layout"),
        ("subsets/broken.json", "subsets"),
    ]
    by_where = {f.where: f.message for f in report.errors}
    assert "missing feature.patch" in by_where["alpha_task/1/feature2"]
    assert "does not apply to the base" in by_where["beta_task/1/feature1"]
    assert "CooperBench's Docker layout" in by_where["delta_task/1"]
    assert "missing feature.md" in by_where["gamma_task/1"]
    assert "x_task" in by_where["subsets/broken.json"]


def test_bundled_dataset_passes_the_static_rules() -> None:
    """Layout, feature.md shape, Files Modified vs patches, patches applying and manifests
    equal to git's merges, under the bundled rules (the runner checks live in test_dataset)."""
    from coop_dag import BUNDLED_DATASET

    report = validate_dataset(BUNDLED_DATASET, run_tests=False)
    assert report.bundled_rules and report.ok and not report.warnings, report.format()


# ---------------------------------------------------------------------------------------------
# the assets


@pytest.fixture
def dataset_env(tmp_path: Path, monkeypatch) -> Path:
    for name in ("COOP_DAG_SUBSET", "COOP_DAG_HELD_OUT", "COOP_DAG_MIRROR_DIR"):
        monkeypatch.delenv(name, raising=False)
    root = make_dataset(tmp_path / "ds", ("alpha_task", "beta_task", "gamma_task"))
    monkeypatch.setenv("COOP_DAG_DATASET", str(root))
    monkeypatch.setenv("COOP_DAG_VALIDATION_REPOS", "beta_task")
    monkeypatch.setenv("COOP_DAG_TEST_REPOS", "gamma_task")
    monkeypatch.setenv("COOP_DAG_RUNS_DIR", str(tmp_path / "runs"))
    return root


def test_task_pool_asset_reports_rejected_tasks(dataset_env: Path) -> None:
    from definitions import defs

    (dataset_env / "alpha_task" / "task1" / "feature3" / "feature.patch").unlink()
    result = dg.materialize(
        [defs.get_assets_def("task_pool")],
        resources={"dataset": defs.resources["dataset"]},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    summary = result.output_for_node("task_pool")
    assert [p["pair_id"] for p in summary["pairs"] if p["split"] == "train"] == [
        "alpha_task/1/f1_f2"
    ]
    assert {p["split"] for p in summary["pairs"] if p["repo"] == "beta_task"} == {"validation"}
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert meta["n_rejected_pairs"].value == 2
    assert "alpha_task/1/feature3" in meta["rejected"].value
    assert (meta["n_train_pairs"].value, meta["n_test_pairs"].value) == (1, 3)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "all_tasks_accepted" and not check.passed
    assert "missing feature.patch" in check.description


def test_teacher_rollouts_fails_without_training_pairs(dataset_env: Path, monkeypatch) -> None:
    from definitions import defs

    monkeypatch.setenv("COOP_DAG_VALIDATION_REPOS", "alpha_task,beta_task")
    instance = dg.DagsterInstance.ephemeral()
    common = dict(resources=defs.resources, instance=instance)
    assert dg.materialize(list(defs.assets), selection=["task_pool"], **common).success
    result = dg.materialize(
        list(defs.assets),
        selection=["teacher_rollouts"],
        partition_key="templated",
        raise_on_error=False,
        **common,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error)
    assert "no training pairs in" in text and "['alpha_task', 'beta_task']" in text
    assert not (dataset_env.parent / "runs" / "templated").exists()  # nothing rolled out
