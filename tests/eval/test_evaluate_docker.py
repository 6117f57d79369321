"""A real task's tests in its Docker image: the docker evaluation backend (the cluster
profile's, or ``COOP_DAG_SANDBOX=docker``) runs CooperBench's call, ``bash
/usr/local/bin/runner.sh tests.patch merged.patch``, in a fresh container of the task's image.

Docker cannot run on this machine (a CLI at most, no daemon), so a fake ``docker`` executable
on PATH stands for it: it records every argv it is called with, keeps what ``docker cp``
copies into a "container", and on ``docker start -a`` plays the task's runner on those files
(a feature's test passes when the merged patch defines the function its tests.patch
imports: pytest's summary line, exit code as pytest's). What is asserted is the command
contract (image, network, bounds, patches, runner arguments, the container's name from
create to removal) and what ``evaluate_pair`` writes into eval.json; the merge itself runs
for real, in bubblewrap, as on the local backend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dataset_factory import add_docker_task

from coop_dag.agent.episode import EpisodeSettings
from coop_dag.agent.sandbox.bwrap import bwrap_status
from coop_dag.agent.sandbox.docker import DockerSandbox, image_for, task_image
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.tasks import TaskError
from coop_dag.eval.evaluate import evaluate_pair, write_eval
from coop_dag.eval.image_tests import _OFFLINE_RUNNER, IMAGE_RUNNER, ImageTestSettings, run_in_image
from coop_dag.eval.metrics import eval_outcome

BWRAP_OK, BWRAP_INFO = bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unusable: {BWRAP_INFO}")

IMAGE = "akhatua/cooperbench-calc:task1"  # CooperBench's name for calc_task/task1

FAKE_DOCKER = r'''#!{python}
"""Stands for the docker CLI (no daemon here): records argv, simulates the containers."""
import json, os, re, shutil, sys, time
from pathlib import Path

state = Path(os.environ["FAKE_DOCKER_STATE"])
state.mkdir(parents=True, exist_ok=True)
with open(state / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "info":
    print("27.3.1")
    sys.exit(0)
if cmd == "create":
    image = args[args.index("--cpus") + 2]
    if image in os.environ.get("FAKE_DOCKER_MISSING", "").split(","):
        print(f"Unable to find image '{{image}}' locally", file=sys.stderr)
        print(f"Error response from daemon: pull access denied for {{image}}, repository does "
              "not exist or may require 'docker login'", file=sys.stderr)
        sys.exit(125)
    box = state / args[args.index("--name") + 1]
    box.mkdir()
    (box / "create.json").write_text(json.dumps(args))
    print("f00dfeed" * 8)
    sys.exit(0)
if cmd == "cp":
    name, dest = args[1].split(":", 1)
    assert dest == "/patches" and args[0].endswith("/."), args
    shutil.copytree(args[0][:-2], state / name / "patches")
    sys.exit(0)
if cmd == "start":
    box = state / args[-1]
    behaviour = os.environ.get("FAKE_DOCKER_RUNNER", "pytest")
    if behaviour == "hang":
        time.sleep(60)
    if behaviour == "missing":
        print("bash: /usr/local/bin/runner.sh: No such file or directory")
        sys.exit(127)
    argv = json.loads((box / "create.json").read_text())
    at = next(i for i, a in enumerate(argv) if a.endswith("runner.sh"))
    patch_args = argv[at + 1:]  # the runner's own arguments
    patches = box / "patches"
    tests = (patches / patch_args[0]).read_text()
    merged = (patches / patch_args[1]).read_text() if len(patch_args) > 1 else ""
    print("Applying test patch...")
    print("coop-dag: 'pip install -e .[test]' skipped: no network")
    funcs = re.findall(r"^\+from calc\.\w+ import (\w+)", tests, re.M)
    missing = [f for f in funcs if f"def {{f}}(" not in merged]
    if missing:
        print(f"E   ImportError: cannot import name '{{missing[0]}}'")
        print(f"========= {{len(missing)}} failed, 1 passed in 0.05s =========")
        sys.exit(1)
    print(f"========= {{len(funcs) + 1}} passed in 0.04s =========")
    sys.exit(0)
if cmd == "rm":  # kept under removed/ for the test to read what the container got
    if (state / args[-1]).exists():
        (state / "removed").mkdir(exist_ok=True)
        (state / args[-1]).rename(state / "removed" / args[-1])
    sys.exit(0)
sys.exit(99)
'''


def calls(state: Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def fake_docker(tmp_path, monkeypatch):
    """The fake `docker` first on PATH; returns its state directory (calls.jsonl)."""
    bin_dir, state = tmp_path / "fakebin", tmp_path / "docker-state"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    for name in ("COOP_DAG_TASK_IMAGE", "COOP_DAG_EVAL_NETWORK", "COOP_DAG_EVAL_MEMORY",
                 "COOP_DAG_EVAL_CPUS", "FAKE_DOCKER_MISSING", "FAKE_DOCKER_RUNNER"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return state


@pytest.fixture(scope="module")
def docker_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("docker-eval")
    dataset, mirror = root / "dataset", root / "mirrors"
    add_docker_task(dataset, mirror)
    return {p.pair_id: p for p in discover_pairs(dataset, mirror_dir=mirror)}, mirror


@pytest.fixture()
def no_task_env(monkeypatch):
    """The docker backend builds no local environment: building one fails the test."""

    def refuse(*a, **k):
        raise AssertionError("ensure_task_env called under the docker backend")

    monkeypatch.setattr("coop_dag.eval.evaluate.ensure_task_env", refuse)


def evaluate_to_file(pair, patches, tmp_path, mirror, **kw) -> dict:
    result = evaluate_pair(pair, *patches, tmp_path / "eval", mirror_dir=mirror, **kw)
    return json.loads(write_eval(tmp_path / "eval.json", result).read_text())


@needs_bwrap
def test_tests_run_in_the_task_image_as_cooperbench_runs_them(
    docker_pairs, fake_docker, no_task_env, tmp_path
):
    pairs, mirror = docker_pairs
    pair = pairs["calc_task/1/f1_f3"]
    gold = [f.feature_patch.read_text() for f in pair.features]
    result = evaluate_to_file(pair, gold, tmp_path, mirror, backend="docker")

    assert result["error"] is None, result["error"]
    assert result["merge"]["status"] == "clean" and result["both_passed"] is True
    for key in ("feature1", "feature2"):
        assert result[key]["passed"] is True and result[key]["exit_code"] == 0
        assert result[key]["tests_passed"] == 2 and result[key]["tests_failed"] == 0
        assert "passed in 0.04s" in result[key]["test_output"]
    assert result["test_env"] == {
        "backend": "docker",
        "image": IMAGE,
        "runner": IMAGE_RUNNER,
        "network": "none",
        "memory": "4g",
        "cpus": "2",
        "pip": "skipped (no network): the image's installed environment",
    }

    # per feature: create, copy the patches in, start attached, remove -- one container name
    seen = calls(fake_docker)
    assert [c[0] for c in seen] == ["create", "cp", "start", "rm"] * 2
    names = []
    merged = result["merge"]["diff"]
    assert "+def double(x):" in merged and "+def wrap(x, n):" in merged
    for n, feature in enumerate(pair.features):
        create, cp, start, rm = seen[4 * n : 4 * n + 4]
        name = create[create.index("--name") + 1]
        assert re.fullmatch(r"coop-dag-eval-[0-9a-f]{10}", name)
        names.append(name)
        assert create == [
            "create", "--name", name, "-w", "/workspace/repo", "--entrypoint", "/bin/bash",
            "--network", "none", "--rm", "--memory", "4g", "--cpus", "2",
            IMAGE, "-c", _OFFLINE_RUNNER, "runner.sh", "tests.patch", "merged.patch",
        ]  # fmt: skip
        assert 'exec bash /usr/local/bin/runner.sh "$@"' in _OFFLINE_RUNNER
        assert cp[2:] == [f"{name}:/patches"] and cp[1].endswith("/.")
        assert start == ["start", "-a", name] and rm == ["rm", "-f", name]
        # what the runner got: this feature's tests.patch and the whole merged patch
        got = fake_docker / "removed" / name / "patches"
        assert sorted(p.name for p in got.iterdir()) == ["merged.patch", "tests.patch"]
        assert (got / "tests.patch").read_text() == feature.tests_patch.read_text()
        assert (got / "merged.patch").read_text() == merged  # under 5000 chars: all of it
        assert not Path(cp[1][:-2]).exists()  # the evaluation's scratch is gone afterwards
    assert names[0] != names[1]


@needs_bwrap
def test_a_missing_feature_fails_its_tests_in_the_image(docker_pairs, fake_docker, tmp_path):
    pairs, mirror = docker_pairs
    pair = pairs["calc_task/1/f1_f3"]
    result = evaluate_to_file(
        pair, [pair.features[0].feature_patch.read_text(), None], tmp_path, mirror,
        backend="docker",
    )  # fmt: skip
    assert result["error"] is None
    assert result["merge"]["status"] == "missing_input"
    assert result["feature1"]["passed"] is True
    f2 = result["feature2"]
    assert f2["passed"] is False and f2["exit_code"] == 1
    assert f2["tests_failed"] == 1 and f2["tests_passed"] == 1
    assert "cannot import name 'wrap'" in f2["test_output"]
    assert result["both_passed"] is False
    assert eval_outcome(result)["both_passed"] is False  # a genuine failure, scored


@needs_bwrap
def test_nothing_merged_gives_the_runner_the_tests_alone(docker_pairs, fake_docker, tmp_path):
    pairs, mirror = docker_pairs
    result = evaluate_to_file(
        pairs["calc_task/1/f1_f3"], [None, None], tmp_path, mirror, backend="docker"
    )
    creates = [c for c in calls(fake_docker) if c[0] == "create"]
    assert [c[-2:] for c in creates] == [["runner.sh", "tests.patch"]] * 2
    assert result["error"] is None and result["both_passed"] is False
    assert result["feature1"]["tests_failed"] == 1 and result["feature2"]["tests_failed"] == 1


@needs_bwrap
def test_a_missing_image_or_docker_failure_is_an_error_not_a_failure(
    docker_pairs, fake_docker, tmp_path, monkeypatch
):
    pairs, mirror = docker_pairs
    pair = pairs["calc_task/1/f1_f3"]
    gold = [f.feature_patch.read_text() for f in pair.features]

    monkeypatch.setenv("FAKE_DOCKER_MISSING", IMAGE)
    result = evaluate_to_file(pair, gold, tmp_path, mirror, backend="docker")
    assert result["error"].startswith(f"tests not run: feature 1 in {IMAGE}: docker create ")
    assert "exit 125" in result["error"] and "pull access denied" in result["error"]
    assert result["feature1"]["tests_passed"] == result["feature1"]["tests_failed"] == 0
    assert result["test_env"]["image"] == IMAGE  # recorded even though it is missing
    assert result["merge"]["status"] == "clean"  # the merge is still reported
    assert eval_outcome(result)["both_passed"] is None  # left out of the rates
    seen = calls(fake_docker)
    assert [c[0] for c in seen] == ["create", "rm"]  # nothing else tried, nothing left behind

    # an image without the runner: it ran, but no pytest summary -> the tests did not run
    monkeypatch.delenv("FAKE_DOCKER_MISSING")
    monkeypatch.setenv("FAKE_DOCKER_RUNNER", "missing")
    result = evaluate_to_file(pair, gold, tmp_path, mirror, backend="docker")
    assert "tests did not run (runner.sh exited 127 with no pytest summary)" in result["error"]
    assert eval_outcome(result)["both_passed"] is None

    # no docker CLI at all
    settings = ImageTestSettings(executable=str(tmp_path / "no-such-docker"))
    result = evaluate_to_file(
        pair, gold, tmp_path, mirror, backend="docker", image_settings=settings
    )
    assert result["error"].startswith("tests not run: feature 1")
    assert "cannot start" in result["error"]


@needs_bwrap
@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI on this machine")
def test_the_real_docker_cli_without_a_daemon_is_an_error(docker_pairs, tmp_path):
    """The machine's own docker CLI, if it has one: no daemon answers it here."""
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        pytest.skip("a Docker daemon answers here: this test is about its absence")
    pairs, mirror = docker_pairs
    pair = pairs["calc_task/1/f1_f3"]
    gold = [f.feature_patch.read_text() for f in pair.features]
    result = evaluate_to_file(pair, gold, tmp_path, mirror, backend="docker")
    assert result["error"].startswith(f"tests not run: feature 1 in {IMAGE}: docker create ")
    assert "docker daemon" in result["error"].lower()


def test_a_timeout_kills_the_container_by_name(fake_docker, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_RUNNER", "hang")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "tests.patch").write_text("")
    started = time.monotonic()
    run = run_in_image(IMAGE, patches, ["tests.patch"], 1.5, ImageTestSettings())
    assert time.monotonic() - started < 30
    assert run.timed_out and run.returncode == -1
    assert "timed out after 1.5 seconds" in run.output
    seen = calls(fake_docker)
    name = seen[0][seen[0].index("--name") + 1]
    assert seen[-1] == ["rm", "-f", name]


def test_settings_from_the_environment_and_cooperbenchs_networked_call(tmp_path):
    env = {
        "COOP_DAG_EVAL_NETWORK": "bridge",
        "COOP_DAG_EVAL_MEMORY": "16g",
        "COOP_DAG_EVAL_CPUS": "4",
        "COOP_DAG_TASK_IMAGE": "registry.local/{repo}:task{task}",
    }
    s = ImageTestSettings.from_env(env)
    assert (s.network, s.memory, s.cpus) == ("bridge", "16g", "4")
    assert s.image_template == "registry.local/{repo}:task{task}"
    # with a network, the runner is called exactly as CooperBench calls it: no pip stand-in
    assert s.create_argv("img:1", "c1", ["tests.patch", "merged.patch"]) == [
        "docker", "create", "--name", "c1", "-w", "/workspace/repo", "--entrypoint", "/bin/bash",
        "--network", "bridge", "--rm", "--memory", "16g", "--cpus", "4",
        "img:1", "/usr/local/bin/runner.sh", "tests.patch", "merged.patch",
    ]  # fmt: skip
    assert "pip" not in s.describe("img:1")
    assert ImageTestSettings.from_env({"COOP_DAG_EVAL_NETWORK": " "}) == ImageTestSettings()


def test_offline_runner_skips_pip_and_runs_the_runner_unchanged(tmp_path):
    runner = tmp_path / "runner.sh"
    runner.write_text(
        '#!/bin/bash\nset -e\necho "args: $1 $2"\npip install --upgrade pip\n'
        'pip3 install -e ".[dev]"\necho "pytest ran"\n'
    )
    script = _OFFLINE_RUNNER.replace(IMAGE_RUNNER, str(runner))
    p = subprocess.run(
        ["bash", "-c", script, "runner.sh", "tests.patch", "merged.patch"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "args: tests.patch merged.patch"
    assert "coop-dag: 'pip install --upgrade pip' skipped: no network" in p.stdout
    assert "'pip install -e .[dev]' skipped" in p.stdout and p.stdout.endswith("pytest ran\n")


def test_task_image_names(docker_pairs, monkeypatch):
    pairs, _ = docker_pairs
    task = pairs["calc_task/1/f1_f3"].task
    monkeypatch.delenv("COOP_DAG_TASK_IMAGE", raising=False)
    assert task_image(task) == image_for(task) == IMAGE  # CooperBench's naming by default
    assert task_image(task, "{repo}:task{task}") == "calc_task:task1"
    assert task_image(task, "me/{name}-{task}") == "me/calc-1"
    with pytest.raises(TaskError, match="COOP_DAG_TASK_IMAGE.*{repo}, {name} and {task}"):
        task_image(task, "x/{nope}")
    # the variable names the agents' containers too
    monkeypatch.setenv("COOP_DAG_TASK_IMAGE", "mirror.local/{repo}:task{task}")
    assert task_image(task) == "mirror.local/calc_task:task1"
    assert DockerSandbox(task, start=False).image == "mirror.local/calc_task:task1"


@needs_bwrap
def test_the_image_template_reaches_the_container(docker_pairs, fake_docker, tmp_path, monkeypatch):
    pairs, mirror = docker_pairs
    monkeypatch.setenv("COOP_DAG_TASK_IMAGE", "mirror.local/{repo}:task{task}")
    result = evaluate_to_file(
        pairs["calc_task/1/f2_f3"], [None, None], tmp_path, mirror, backend="docker"
    )
    assert result["test_env"]["image"] == "mirror.local/calc_task:task1"
    assert {c[c.index("--cpus") + 2] for c in calls(fake_docker) if c[0] == "create"} == {
        "mirror.local/calc_task:task1"
    }
    monkeypatch.setenv("COOP_DAG_TASK_IMAGE", "x/{nope}")
    result = evaluate_pair(
        pairs["calc_task/1/f2_f3"], None, None, tmp_path / "e", mirror_dir=mirror,
        backend="docker",
    )  # fmt: skip
    assert result["error"].startswith("tests not run: no task image: COOP_DAG_TASK_IMAGE=")


@needs_bwrap
def test_a_task_without_an_image_layout_runs_locally_under_docker(fake_docker, tmp_path):
    """The bundled tasks' runners need no image: the docker backend leaves them local."""
    from coop_dag import BUNDLED_DATASET

    pair = next(p for p in discover_pairs(BUNDLED_DATASET) if p.pair_id.startswith("lrucache"))
    gold = pair.features[0].feature_patch.read_text()
    result = evaluate_pair(pair, gold, None, tmp_path / "eval", backend="docker")
    assert result["error"] is None and "test_env" not in result
    assert result["feature1"]["passed"] and result["feature1"]["tests_passed"] > 0
    assert calls(fake_docker) == []
    with pytest.raises(ValueError, match="evaluation backend 'podman'"):
        evaluate_pair(pair, gold, None, tmp_path / "eval", backend="podman")


def test_rollouts_evaluate_with_the_sandbox_backend(fake_docker, tmp_path, monkeypatch):
    """`rollout_pairs(sandbox="docker")` (the cluster profile's choice) evaluates in images."""
    from coop_dag.agent import rollouts

    seen: list[EpisodeSettings] = []
    monkeypatch.setattr(
        rollouts, "run_pairs", lambda pairs, mm, client, settings, **kw: seen.append(settings) or []
    )
    monkeypatch.setattr(rollouts, "summarise_run", lambda pairs, run_dir: {})

    class NoRedis:  # the bus is not what this test is about
        client, restarts = None, ()

        def __init__(self, url, log=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(rollouts, "RedisLink", NoRedis)
    for backend in ("docker", "local"):
        rollouts.rollout_pairs(
            [], None, tmp_path / "run", steering=False, limits=None, model_name="m",
            sandbox=backend, log=lambda _: None,
        )  # fmt: skip
    assert [s.eval_backend for s in seen] == ["docker", "local"]
    assert EpisodeSettings(run_dir=tmp_path).eval_backend == "local"
