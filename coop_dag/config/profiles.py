"""One switch for where things run: ``COOP_DAG_PROFILE=embedded|cluster``.

The profile picks an engine for every concern; individual environment variables override
single choices. Resources (`resources/training.py`, `resources/serving.py`,
`resources/rollout.py`) read their defaults from here, so the same asset graph runs on a
laptop or a GPU cluster by changing the environment, not code.

| concern | embedded (default) | cluster | override |
|---|---|---|---|
| sandbox | ``local`` (bubblewrap) | ``docker`` (CooperBench images) | ``COOP_DAG_SANDBOX`` |
| real tasks' tests | task env, bubblewrap | the task's image | (follows the sandbox) |
| messaging | embedded Redis server | ``redis://redis:6379/0`` | ``COOP_DAG_REDIS_URL`` |
| trainer | ``embedded`` (CPU LoRA; or ``verl-cpu``) | ``verl`` | ``COOP_DAG_TRAINER`` |
| verl | verl-cpu: ``<repo>/.venv-verl`` | ``/opt/verl-env/bin/python`` | ``COOP_DAG_VERL_PYTHON`` |
| verl image | — | — | ``COOP_DAG_VERL_IMAGE`` |
| GPUs per training | 1 | 1 | ``COOP_DAG_VERL_NPROC`` |
| vLLM device | ``cpu`` | ``gpu`` | ``COOP_DAG_VLLM_DEVICE`` |
| vLLM | ``<repo>/.venv-vllm`` | ``/opt/vllm-env`` | ``COOP_DAG_VLLM_URL``, ``_PYTHON``, ``_IMAGE``|
| runs | ``<repo>/runs`` | ``/data/runs`` | ``COOP_DAG_RUNS_DIR`` |
| adapters | ``<runs>/adapters`` | ``/data/adapters`` | ``COOP_DAG_ADAPTERS_DIR`` |
| lineage | ``<runs>/lineage.duckdb`` | ``/data/lineage/lineage.duckdb`` | ``COOP_DAG_LINEAGE_DB`` |

With the docker sandbox, a real task's tests run in its image (`coop_dag.eval.evaluate`):
``COOP_DAG_TASK_IMAGE`` names the images (a template, default CooperBench's
``akhatua/cooperbench-{name}:task{task}``, agents' containers too), ``COOP_DAG_EVAL_NETWORK``
(default ``none``), ``COOP_DAG_EVAL_MEMORY`` (``4g``) and ``COOP_DAG_EVAL_CPUS`` (``2``)
bound the test container.

``COOP_DAG_DATA_DIR`` moves the root of the three paths (``<root>/runs``, ``<root>/adapters``,
``<root>/lineage/lineage.duckdb``; the cluster root is ``/data``, a mounted volume).

Setting ``COOP_DAG_VERL_IMAGE`` (without ``COOP_DAG_VERL_PYTHON``) trains in that container
image instead of a local verl environment; ``COOP_DAG_VLLM_URL`` attaches to a running vLLM
instead of launching one, and ``COOP_DAG_VLLM_IMAGE`` launches it from a container image.
An empty variable counts as unset.

``COOP_DAG_TRAINER=verl-cpu`` trains with real verl on this machine's CPU: the same trainer,
``TitoSFTDataset`` and export as on GPUs (`coop_dag.training.verl_config.CPU_OVERRIDES`), from
the venv ``scripts/verl_venv.sh`` builds (``$COOP_DAG_VERL_VENV``, default
``<repo>/.venv-verl``; ``COOP_DAG_VERL_PYTHON`` wins), one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coop_dag import REPO_ROOT

__all__ = [
    "CLUSTER",
    "EMBEDDED",
    "ENV_VARS",
    "PROFILES",
    "Profile",
    "ProfileError",
    "ServerChoice",
    "TrainerChoice",
    "resolve_profile",
]

EMBEDDED = "embedded"
CLUSTER = "cluster"
PROFILES = (EMBEDDED, CLUSTER)

SANDBOXES = ("local", "docker")
TRAINERS = ("embedded", "verl", "verl-cpu")
VERL_KINDS = ("verl", "verl-cpu")  # trainers that run verl (train_lora_verl)
DEVICES = ("cpu", "gpu")

# Paths inside deploy/Dockerfile.gpu (the cluster run image).
CLUSTER_VERL_PYTHON = "/opt/verl-env/bin/python"
CLUSTER_VLLM_PYTHON = "/opt/vllm-env/bin/python"
# Made by scripts/vllm_venv.sh (the README's commands run it): the CPU build of vLLM.
EMBEDDED_VLLM_PYTHON = str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
CLUSTER_DATA_DIR = "/data"
CLUSTER_REDIS_URL = "redis://redis:6379/0"  # the compose service
LOCAL_VERL_VENV = ".venv-verl"  # scripts/verl_venv.sh's default, under the repository


def local_verl_python(env: Mapping[str, str] | None = None) -> str:
    """verl's python in the venv scripts/verl_venv.sh builds (``$COOP_DAG_VERL_VENV``)."""
    env = os.environ if env is None else env
    venv = _get(env, "COOP_DAG_VERL_VENV") or LOCAL_VERL_VENV
    return str(REPO_ROOT / venv / "bin" / "python")  # an absolute venv path stays as it is

ENV_VARS: dict[str, str] = {
    "COOP_DAG_PROFILE": "embedded (default) | cluster: picks every engine below",
    "COOP_DAG_SANDBOX": "local | docker: where agent commands (and real tasks' tests) run",
    "COOP_DAG_TASK_IMAGE": "task image template: {repo} {name} {task} (default CooperBench's)",
    "COOP_DAG_EVAL_NETWORK": "docker network of a test container (default none: pip skipped)",
    "COOP_DAG_EVAL_MEMORY": "memory bound of a test container (docker --memory; default 4g)",
    "COOP_DAG_EVAL_CPUS": "CPU bound of a test container (docker --cpus; default 2)",
    "COOP_DAG_REDIS_URL": "Redis URL for agent messaging; unset: an embedded server",
    "COOP_DAG_TRAINER": "embedded | verl | verl-cpu (real verl on this CPU, own venv)",
    "COOP_DAG_VERL_VENV": "verl-cpu's venv (scripts/verl_venv.sh; default <repo>/.venv-verl)",
    "COOP_DAG_VERL_PYTHON": "python of verl's own environment (train with it)",
    "COOP_DAG_VERL_IMAGE": "container image with verl (train in it, via docker run --gpus)",
    "COOP_DAG_VERL_NPROC": "GPUs per training run (torchrun --nproc_per_node)",
    "COOP_DAG_VLLM_DEVICE": "cpu | gpu: the device vLLM serves on (embedded: cpu)",
    "COOP_DAG_VLLM_URL": "attach to this running vLLM instead of launching one",
    "COOP_DAG_VLLM_PYTHON": "python of vLLM's own environment (launch vllm serve with it)",
    "COOP_DAG_VLLM_IMAGE": "container image to launch vllm serve from",
    "COOP_DAG_DATA_DIR": "root of runs/adapters/lineage (cluster: a mounted volume)",
    "COOP_DAG_RUNS_DIR": "rollout logs and per-variant stage outputs",
    "COOP_DAG_ADAPTERS_DIR": "trained and dropped-in adapters (the sensor watches it)",
    "COOP_DAG_LINEAGE_DB": "the DuckDB lineage store",
}


class ProfileError(ValueError):
    """A bad profile name or engine choice; the message names the variable."""


@dataclass(frozen=True)
class TrainerChoice:
    kind: str  # embedded | verl | verl-cpu
    verl_python: str | None = None  # verl: its own environment ...
    verl_image: str | None = None  # ... or a container image (exactly one for verl)
    nproc: int = 1  # verl-cpu: always 1 (one CPU process)

    @property
    def device(self) -> str:
        """verl's device: ``cpu`` for verl-cpu, ``cuda`` otherwise."""
        return "cpu" if self.kind == "verl-cpu" else "cuda"

    @property
    def launch(self) -> str:
        """embedded | python | container."""
        if self.kind == "embedded":
            return "embedded"
        return "python" if self.verl_python else "container"


@dataclass(frozen=True)
class ServerChoice:
    """How the student is served: always vLLM, only the device and the launch differ."""

    device: str = "cpu"  # cpu | gpu
    url: str | None = None  # attach to this ...
    vllm_python: str | None = None  # ... or launch from this environment ...
    vllm_image: str | None = None  # ... or from this image

    @property
    def mode(self) -> str:
        """attach | python | container."""
        if self.url:
            return "attach"
        return "python" if self.vllm_python else "container"


@dataclass(frozen=True)
class Profile:
    name: str
    sandbox: str  # local | docker
    redis_url: str | None  # None: start the embedded server
    trainer: TrainerChoice
    server: ServerChoice
    runs_dir: Path
    adapters_dir: Path
    lineage_db: Path

    def describe(self) -> dict[str, Any]:
        """Plain values, for materialisation metadata and `coop-dag` output."""
        out = asdict(self)
        for key in ("runs_dir", "adapters_dir", "lineage_db"):
            out[key] = str(out[key])
        out["trainer"]["launch"] = self.trainer.launch
        out["server"]["mode"] = self.server.mode
        return out


def _get(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key)
    return value.strip() if value and value.strip() else None


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _get(env, key) or default
    if value not in allowed:
        raise ProfileError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
    return value


def resolve_profile(env: Mapping[str, str] | None = None) -> Profile:
    """The engines for `env` (default: the process environment)."""
    env = os.environ if env is None else env
    name = _choice(env, "COOP_DAG_PROFILE", EMBEDDED, PROFILES)
    cluster = name == CLUSTER

    data = _get(env, "COOP_DAG_DATA_DIR")
    if data or cluster:
        root = Path(data or CLUSTER_DATA_DIR)
        runs = Path(_get(env, "COOP_DAG_RUNS_DIR") or root / "runs")
        adapters_default = root / "adapters"
        lineage_default = root / "lineage" / "lineage.duckdb"
    else:
        runs = Path(_get(env, "COOP_DAG_RUNS_DIR") or REPO_ROOT / "runs")
        adapters_default = runs / "adapters"
        lineage_default = runs / "lineage.duckdb"
    adapters = Path(_get(env, "COOP_DAG_ADAPTERS_DIR") or adapters_default)
    lineage = Path(_get(env, "COOP_DAG_LINEAGE_DB") or lineage_default)

    sandbox = _choice(env, "COOP_DAG_SANDBOX", "docker" if cluster else "local", SANDBOXES)
    redis_url = _get(env, "COOP_DAG_REDIS_URL") or (CLUSTER_REDIS_URL if cluster else None)

    trainer_kind = _choice(env, "COOP_DAG_TRAINER", "verl" if cluster else "embedded", TRAINERS)
    nproc_text = _get(env, "COOP_DAG_VERL_NPROC") or "1"
    try:
        nproc = int(nproc_text)
    except ValueError:
        nproc = 0
    if nproc < 1:
        raise ProfileError(f"COOP_DAG_VERL_NPROC={nproc_text!r}: expected a positive integer")
    if trainer_kind == "verl-cpu":
        verl_python = _get(env, "COOP_DAG_VERL_PYTHON") or local_verl_python(env)
        trainer = TrainerChoice("verl-cpu", verl_python, None, 1)
    elif trainer_kind == "verl":
        verl_python = _get(env, "COOP_DAG_VERL_PYTHON")
        verl_image = None if verl_python else _get(env, "COOP_DAG_VERL_IMAGE")
        if not verl_python and not verl_image:
            verl_python = CLUSTER_VERL_PYTHON
        trainer = TrainerChoice("verl", verl_python, verl_image, nproc)
    else:
        trainer = TrainerChoice("embedded", nproc=nproc)

    if _get(env, "COOP_DAG_SERVER") not in (None, "vllm"):
        raise ProfileError(
            f"COOP_DAG_SERVER={_get(env, 'COOP_DAG_SERVER')!r}: the embedded server is retired, "
            "vLLM serves every model (unset the variable)"
        )
    device = _choice(env, "COOP_DAG_VLLM_DEVICE", "gpu" if cluster else "cpu", DEVICES)
    url = _get(env, "COOP_DAG_VLLM_URL")
    vllm_python = None if url else _get(env, "COOP_DAG_VLLM_PYTHON")
    vllm_image = None if (url or vllm_python) else _get(env, "COOP_DAG_VLLM_IMAGE")
    if not (url or vllm_python or vllm_image):
        vllm_python = CLUSTER_VLLM_PYTHON if cluster else EMBEDDED_VLLM_PYTHON
    server = ServerChoice(device, url, vllm_python, vllm_image)

    return Profile(
        name=name,
        sandbox=sandbox,
        redis_url=redis_url,
        trainer=trainer,
        server=server,
        runs_dir=runs,
        adapters_dir=adapters,
        lineage_db=lineage,
    )
