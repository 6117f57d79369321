"""What the cluster profile needs from the host, checked before work starts: a Docker daemon
(the docker sandbox, verl or vLLM from an image) and NVIDIA GPUs (verl on GPUs, vLLM on GPUs).
A missing one is a :class:`HostRequirementError` naming what is missing, the variable that
asked for it and the way out -- raised before any pair rolls out or any process starts, not
as a timeout or a connection error half-way through a run."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from coop_dag.config.profiles import Profile, ServerChoice, TrainerChoice

__all__ = [
    "HostRequirementError",
    "check_profile",
    "check_sandbox",
    "check_server",
    "check_trainer",
    "docker_status",
    "gpu_status",
    "require_docker",
    "require_gpus",
]


class HostRequirementError(RuntimeError):
    """The host lacks what the selected engine needs (Docker daemon, GPUs)."""


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str  # what was found, or why not
    count: int = 0  # GPUs seen (gpu_status)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"`{argv[0]}` is not installed (not on PATH)"
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` did not answer within {timeout:g}s"


def docker_status(executable: str = "docker", timeout: float = 20.0) -> Status:
    """Whether a Docker daemon answers the CLI (`docker info`): a CLI alone is not enough."""
    if shutil.which(executable) is None:
        return Status(False, f"`{executable}` is not installed (not on PATH)")
    p = _run([executable, "info", "--format", "{{.ServerVersion}}"], timeout)
    if isinstance(p, str):
        return Status(False, p)
    version = p.stdout.strip()
    if p.returncode != 0 or not version:
        why = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()
        return Status(False, f"no Docker daemon answers `{executable} info`: {why[-1]}")
    return Status(True, f"Docker daemon {version}")


def gpu_status(timeout: float = 20.0) -> Status:
    """The NVIDIA GPUs `nvidia-smi -L` lists (the driver's view; no CUDA library needed)."""
    p = _run(["nvidia-smi", "-L"], timeout)
    if isinstance(p, str):
        return Status(False, f"no NVIDIA driver: {p}")
    gpus = [line for line in p.stdout.splitlines() if line.startswith("GPU ")]
    if p.returncode != 0 or not gpus:
        why = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()
        return Status(False, f"`nvidia-smi -L` lists no GPU: {why[-1] if why else ''}")
    return Status(True, f"{len(gpus)} GPU(s)", len(gpus))


def require_docker(needed_by: str, instead: str, executable: str = "docker") -> str:
    """The daemon's description, or :class:`HostRequirementError`: `needed_by` names the
    setting that asked for Docker (e.g. ``COOP_DAG_SANDBOX=docker``), `instead` the way out."""
    status = docker_status(executable)
    if not status.ok:
        raise HostRequirementError(
            f"{needed_by} needs Docker ({status.detail}); start the Docker daemon (or mount "
            f"/var/run/docker.sock into this container), or {instead}"
        )
    return status.detail


def require_gpus(n: int, needed_by: str, instead: str) -> int:
    """The number of GPUs (at least `n`), or :class:`HostRequirementError` naming them."""
    status = gpu_status()
    if not status.ok or status.count < n:
        found = status.detail if not status.ok else f"only {status.count} GPU(s) are visible"
        raise HostRequirementError(
            f"{needed_by} needs {n} NVIDIA GPU(s) ({found}); run on a GPU host (the run "
            f"container gets them through device_requests in deploy/dagster.yaml), or {instead}"
        )
    return status.count


# -- the profile's engines ----------------------------------------------------------------

_TRAIN_ON_CPU = "set COOP_DAG_TRAINER=verl-cpu (real verl on this CPU) or embedded"
_SERVE_ON_CPU = (
    "set COOP_DAG_VLLM_DEVICE=cpu (vLLM's CPU build), or attach to a running vLLM with "
    "COOP_DAG_VLLM_URL"
)


def check_trainer(choice: TrainerChoice) -> None:
    """What `choice` (a verl trainer on GPUs, from its python or its image) needs of the host;
    nothing for the embedded trainer or verl-cpu (its venv is checked where it is used)."""
    if choice.kind != "verl":
        return
    if choice.verl_image:
        require_docker(f"COOP_DAG_VERL_IMAGE={choice.verl_image} (verl in a container)",
                       "set COOP_DAG_VERL_PYTHON to a local verl environment, or "
                       + _TRAIN_ON_CPU)  # fmt: skip
    require_gpus(
        choice.nproc,
        f"COOP_DAG_TRAINER=verl (COOP_DAG_VERL_NPROC={choice.nproc} GPU(s) per training run)",
        _TRAIN_ON_CPU,
    )
    if choice.verl_python and not Path(choice.verl_python).exists():
        raise HostRequirementError(
            f"COOP_DAG_TRAINER=verl: verl's python {choice.verl_python} does not exist "
            "(COOP_DAG_VERL_PYTHON; the cluster's is /opt/verl-env in the coop-dag-gpu image): "
            f"run in that image, point COOP_DAG_VERL_PYTHON at a verl environment, or "
            f"{_TRAIN_ON_CPU}"
        )


def check_server(choice: ServerChoice) -> None:
    """What serving with `choice` needs of the host: GPUs for vLLM on GPUs, Docker for vLLM
    from an image; nothing to attach to a running server (its URL is checked when used)."""
    if choice.mode == "attach":
        return
    if choice.mode == "container":
        require_docker(f"COOP_DAG_VLLM_IMAGE={choice.vllm_image} (vLLM in a container)",
                       "set COOP_DAG_VLLM_PYTHON to a local vLLM environment")  # fmt: skip
    if choice.device == "gpu":
        require_gpus(1, "COOP_DAG_VLLM_DEVICE=gpu (vLLM on GPUs)", _SERVE_ON_CPU)


def check_sandbox(backend: str) -> None:
    """Docker for the docker sandbox (CooperBench's task images); bubblewrap is checked by
    LocalSandbox itself."""
    if backend == "docker":
        require_docker(
            "COOP_DAG_SANDBOX=docker (agents in CooperBench's task images)",
            "set COOP_DAG_SANDBOX=local to run agents in bubblewrap",
        )


def check_profile(profile: Profile) -> list[str]:
    """Every host requirement of `profile` that is not met (empty: all are)."""
    problems = []
    for check, arg in (
        (check_sandbox, profile.sandbox),
        (check_trainer, profile.trainer),
        (check_server, profile.server),
    ):
        try:
            check(arg)
        except HostRequirementError as err:
            problems.append(str(err))
    return problems
