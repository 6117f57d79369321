"""What the cluster profile needs from the host, checked before work starts: a Docker daemon
(the docker sandbox, verl or vLLM from an image) and NVIDIA GPUs (verl on GPUs, vLLM on GPUs).
A missing one is a :class:`HostRequirementError` naming what is missing, the variable that
asked for it and the way out -- raised before any pair rolls out or any process starts, not
as a timeout or a connection error half-way through a run."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = [
    "HostRequirementError",
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
