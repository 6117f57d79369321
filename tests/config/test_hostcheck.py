"""`COOP_DAG_PROFILE=cluster` on a host without Docker or GPUs fails early, naming what is
missing and the variable: the profile check (`coop-dag profile --check`), the training and
serving resources before they start anything, and (tests/pipeline/test_teacher_assets.py) the docker
sandbox before any pair. Fake `docker` / `nvidia-smi` on PATH give each host shape; the last
test uses this machine as it is (a docker CLI, no daemon, no GPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coop_dag import REPO_ROOT
from coop_dag.config.hostcheck import (
    HostRequirementError,
    check_profile,
    docker_status,
    gpu_status,
)
from coop_dag.config.profiles import resolve_profile

NO_DAEMON = "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2; exit 1"
TWO_GPUS = "echo 'GPU 0: NVIDIA H100 (UUID: GPU-a)'; echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'"


def _tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A PATH holding only the tools a test puts in tmp/bin (plus sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    for name in ("docker", "nvidia-smi"):
        if shutil.which(name) and Path(shutil.which(name)).parent != bin_dir:
            pytest.skip(f"{name} is in /usr/bin or /bin here: cannot hide it")
    for key in list(os.environ):
        if key.startswith("COOP_DAG_") and key not in ("COOP_DAG_CACHE",):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COOP_DAG_PROFILE", "cluster")
    return bin_dir


def test_cluster_profile_without_docker_or_gpus_names_each(host):
    _tool(host, "docker", NO_DAEMON)  # a CLI, no daemon: this machine's shape
    problems = check_profile(resolve_profile())
    assert len(problems) == 3, problems
    sandbox, trainer, server = problems
    assert "COOP_DAG_SANDBOX=docker" in sandbox and "needs Docker" in sandbox
    assert "Cannot connect to the Docker daemon" in sandbox
    assert "COOP_DAG_TRAINER=verl" in trainer and "needs 1 NVIDIA GPU(s)" in trainer
    assert "`nvidia-smi` is not installed" in trainer and "verl-cpu" in trainer
    assert "COOP_DAG_VLLM_DEVICE=gpu" in server and "NVIDIA GPU" in server


def test_cluster_profile_on_a_gpu_host(host, monkeypatch, tmp_path):
    _tool(host, "docker", "echo 27.3.1")
    _tool(host, "nvidia-smi", TWO_GPUS)
    assert docker_status().ok and gpu_status().count == 2
    # verl's environment is the image's /opt/verl-env: absent on a host that only has GPUs
    [problem] = check_profile(resolve_profile())
    assert "verl's python /opt/verl-env/bin/python does not exist" in problem
    verl = tmp_path / "verl-env" / "bin" / "python"
    verl.parent.mkdir(parents=True)
    verl.write_text("")
    monkeypatch.setenv("COOP_DAG_VERL_PYTHON", str(verl))
    assert check_profile(resolve_profile()) == []
    monkeypatch.setenv("COOP_DAG_VERL_NPROC", "4")  # more GPUs than the host has
    [problem] = check_profile(resolve_profile())
    assert "needs 4 NVIDIA GPU(s) (only 2 GPU(s) are visible)" in problem
    assert "COOP_DAG_VERL_NPROC=4" in problem


def test_images_need_docker(host, monkeypatch):
    _tool(host, "nvidia-smi", TWO_GPUS)  # GPUs, but no docker at all
    monkeypatch.setenv("COOP_DAG_SANDBOX", "local")
    monkeypatch.setenv("COOP_DAG_VERL_IMAGE", "coop-dag-gpu:latest")
    monkeypatch.setenv("COOP_DAG_VLLM_IMAGE", "vllm/vllm-openai:v0.32.0")
    trainer, server = check_profile(resolve_profile())
    assert "COOP_DAG_VERL_IMAGE=coop-dag-gpu:latest" in trainer
    assert "`docker` is not installed" in trainer
    assert "COOP_DAG_VLLM_IMAGE=vllm/vllm-openai:v0.32.0" in server


def test_resources_fail_before_starting_anything(host):
    from resources.serving import ServingResource
    from resources.training import TrainingResource

    with pytest.raises(HostRequirementError, match=r"COOP_DAG_TRAINER=verl .*NVIDIA GPU"):
        TrainingResource().check_host()
    TrainingResource(kind="verl-cpu").check_host()  # the CPU needs nothing of the host
    with pytest.raises(HostRequirementError, match=r"COOP_DAG_VLLM_DEVICE=gpu .*NVIDIA GPU"):
        ServingResource(port=8199).ensure("tiny-qwen3")  # raised before any launch


def test_coop_dag_profile_check_on_this_machine(monkeypatch):
    """This machine as it is: `coop-dag profile --check` under the cluster profile exits 1,
    naming what is missing; the embedded profile passes."""
    if docker_status().ok and gpu_status().ok:
        pytest.skip("this host has Docker and GPUs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOP_DAG_")}
    cluster = subprocess.run(
        [sys.executable, "-m", "coop_dag.cli", "profile", "--check"],
        env={**env, "COOP_DAG_PROFILE": "cluster"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cluster.returncode == 1, cluster.stderr
    assert '"name": "cluster"' in cluster.stdout
    missing = [line for line in cluster.stderr.splitlines() if line.startswith("missing: ")]
    assert missing and all(("Docker" in m) or ("NVIDIA GPU" in m) for m in missing), missing
    if not docker_status().ok:
        assert any("COOP_DAG_SANDBOX=docker" in m for m in missing)
    if not gpu_status().ok:
        assert any("COOP_DAG_TRAINER=verl" in m for m in missing)
        assert any("COOP_DAG_VLLM_DEVICE=gpu" in m for m in missing)
    embedded = subprocess.run(
        [sys.executable, "-m", "coop_dag.cli", "profile", "--check"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert embedded.returncode == 0, embedded.stderr
