"""Real CooperBench tasks on the local backend: a task whose runner expects CooperBench's image
(`cd /workspace/repo`, `pip install`) gets an environment built once from its own declarations
(uv, the package registry, cached) and its tests run for real in the sandbox; an evaluation
whose tests could not run says why in eval.json, and scoring keeps it out of the rates."""

from __future__ import annotations

import json
import shutil

import pytest
from dataset_factory import add_docker_task

from coop_dag.agent.episode import pair_dir
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.task_env import (
    ENV_MARKER,
    TaskEnvError,
    ensure_task_env,
    needs_docker_layout,
    parse_declarations,
    static_project_requirements,
)
from coop_dag.eval.evaluate import evaluate_pair
from coop_dag.eval.metrics import eval_outcome, main_score

DSPY_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /workspace
RUN git clone https://github.com/stanfordnlp/dspy.git repo && \\
    cd repo && \\
    git checkout 3ded7a6266514c1569452b0e26bcd4e75c1ee6db
WORKDIR /workspace/repo
RUN pip install --upgrade pip && \\
    pip install -e ".[dev]"
RUN pip install "litellm==1.77.1"
COPY runner.sh /usr/local/bin/
"""


def test_declarations_from_a_cooperbench_dockerfile():
    d = parse_declarations(DSPY_DOCKERFILE, "Dockerfile")
    assert d.requirements == ("litellm==1.77.1",)  # `pip install --upgrade pip` is tooling
    assert d.project_extras == ("dev",)
    d = parse_declarations("RUN pip3 install -q --no-cache-dir -r requirements-test.txt torch", "x")
    assert d.requirement_files == ("requirements-test.txt",) and d.requirements == ("torch",)
    assert d.project_extras is None


def test_project_requirements_expand_extras_and_self_references():
    pyproject = """[project]
name = "Pkg_x"
dependencies = ["attrs>=22"]
[project.optional-dependencies]
test = ["pytest", "hypothesis"]
dev = ["pkg-x[test]", "ruff"]
"""
    files = {"pyproject.toml": pyproject}
    reqs = static_project_requirements(files.get, ("dev",))
    assert sorted(reqs) == ["attrs>=22", "hypothesis", "pytest", "ruff"]
    with pytest.raises(TaskEnvError, match=r"\[docs\]"):
        static_project_requirements(files.get, ("docs",))
    dynamic = {"pyproject.toml": '[project]\nname = "p"\ndynamic = ["dependencies"]\n'}
    assert static_project_requirements(dynamic.get, ()) is None  # its build backend decides


@pytest.fixture(scope="module")
def docker_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("docker-dataset")
    dataset, mirror = root / "dataset", root / "mirrors"
    add_docker_task(dataset, mirror)
    return dataset, mirror


def test_gold_patches_of_a_docker_layout_task_run_their_tests(docker_dataset, tmp_path):
    dataset, mirror = docker_dataset
    pairs = {p.pair_id: p for p in discover_pairs(dataset, mirror_dir=mirror)}
    assert needs_docker_layout(pairs["calc_task/1/f1_f3"].task.runner)
    # the environment is built once (or was, by an earlier session: cached by task) ...
    env = ensure_task_env(pairs["calc_task/1/f1_f3"].task, mirror)
    assert (env.path / ENV_MARKER).is_file() and env.python.exists()
    assert env.requirements == ["pytest"]  # the repository's [test] extra
    marker_mtime = (env.path / ENV_MARKER).stat().st_mtime_ns
    for pid in ("calc_task/1/f1_f3", "calc_task/1/f2_f3"):
        pair = pairs[pid]
        gold = [(f.feature_patch.read_text()) for f in pair.features]
        result = evaluate_pair(pair, *gold, tmp_path / "eval", mirror_dir=mirror)
        assert result["error"] is None, result["error"]
        for key in ("feature1", "feature2"):
            feat = result[key]
            # tests/test_base.py and the feature's own test file ran and passed in the sandbox
            assert feat["tests_passed"] == 2 and feat["tests_failed"] == 0, feat["test_output"]
            assert "pip install -e .[test]' skipped" in feat["test_output"]
        assert result["both_passed"] is True
        assert result["merge"]["status"] == "clean"
        # ... and reused afterwards: nothing reinstalled
        assert result["test_env"]["built_now"] is False
        assert result["test_env"]["path"] == str(env.path)
    assert (env.path / ENV_MARKER).stat().st_mtime_ns == marker_mtime


def test_merged_tree_without_a_feature_fails_its_tests(docker_dataset, tmp_path):
    dataset, mirror = docker_dataset
    pair = next(p for p in discover_pairs(dataset, mirror_dir=mirror) if p.feature_b == 3)
    result = evaluate_pair(
        pair, pair.features[0].feature_patch.read_text(), None, tmp_path, mirror_dir=mirror
    )
    assert result["error"] is None
    assert result["feature1"]["passed"] is True
    assert result["feature2"]["tests_failed"] > 0 and result["both_passed"] is False


def test_tests_that_could_not_run_are_an_error_not_a_failure(docker_dataset, tmp_path, capsys):
    dataset, mirror = docker_dataset
    broken = tmp_path / "dataset"
    shutil.copytree(dataset, broken)
    task = broken / "calc_task" / "task1"
    # a declared requirements file the repository does not have: no environment
    dockerfile = task / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN pip install -r requirements-ci.txt\n")
    pair = next(p for p in discover_pairs(broken, mirror_dir=mirror) if p.pair_id.endswith("f1_f3"))
    gold = [f.feature_patch.read_text() for f in pair.features]
    result = evaluate_pair(pair, *gold, tmp_path / "eval", mirror_dir=mirror)
    assert "requirements-ci.txt" in result["error"] and "tests not run" in result["error"]
    assert eval_outcome(result)["both_passed"] is None

    # a runner that dies before pytest: no summary line, so the tests did not run
    dockerfile.write_text(
        dockerfile.read_text().replace("RUN pip install -r requirements-ci.txt\n", "")
    )
    runner = task / "runner.sh"
    runner.write_text(runner.read_text().replace("timeout 300 python", "exit 4\npython"))
    result = evaluate_pair(pair, *gold, tmp_path / "eval", mirror_dir=mirror)
    assert "did not run" in result["error"] and "exited 4" in result["error"]
    assert result["merge"]["status"] == "clean"

    # score: the pair is counted and listed apart, not scored as a failure of the agents
    run = pair_dir(tmp_path / "run", pair)
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps(result))
    for fid in pair.features:
        traj = {
            "repo": pair.repo, "task_id": pair.task_id, "feature_id": fid.feature_id,
            "agent_id": f"agent{fid.feature_id}", "model": "m", "status": "Submitted",
            "cost": 0, "steps": 0, "messages": [],
        }  # fmt: skip
        (run / f"agent{fid.feature_id}_traj.json").write_text(json.dumps(traj))
    (run / "conversation.json").write_text("[]")
    summary = main_score(tmp_path / "run")["summary"]
    assert summary["n_eval_errors"] == 1 and summary["n_evaluated"] == 0
    assert summary["both_passed_rate"] is None
    assert list(summary["eval_error_pairs"]) == [pair.pair_id]
    assert "not scored for both_passed" in capsys.readouterr().err
