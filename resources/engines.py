"""Training and serving engines as Dagster resources.

Both resources only hold configuration and build `coop_dag` objects. Every field left at
its empty default is taken from the profile (`coop_dag.profiles`: ``COOP_DAG_PROFILE`` and
the individual ``COOP_DAG_*`` overrides), read when the resource is used, i.e. in the run's
own environment (a run container gets them through dagster.yaml's ``env_vars``).

- `TrainerResource.build()`: a `coop_dag.verl.VerlLauncher` for ``verl``; for ``embedded``
  the resolved `TrainerChoice` (the CPU trainer consumes it).
- `ServerResource.build(model)`: a `VllmEngine` client when attaching to a URL, a (not yet
  started) `VllmServer` when launching vLLM, the `ServerChoice` for ``embedded``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from coop_dag import REPO_ROOT
from coop_dag.profiles import (
    CLUSTER_VERL_PYTHON,
    CLUSTER_VLLM_PYTHON,
    SERVERS,
    TRAINERS,
    ProfileError,
    ServerChoice,
    TrainerChoice,
    resolve_profile,
)
from coop_dag.verl import VerlLauncher
from coop_dag.vllm import (
    DEFAULT_TOOL_CALL_PARSER,
    VllmEngine,
    VllmLauncher,
    VllmServeConfig,
    VllmServer,
    lora_rank_slot,
)


def _project_pythonpath() -> tuple[str, ...]:
    """A source checkout's root, so verl's separate environment imports coop_dag."""
    return (str(REPO_ROOT),) if (REPO_ROOT / "pyproject.toml").is_file() else ()


class TrainerResource(dg.ConfigurableResource):
    """Where LoRA training runs. Empty fields come from the profile."""

    kind: str = Field(default="", description="embedded | verl; empty: the profile's")
    verl_python: str = Field(default="", description="python of verl's own environment")
    verl_image: str = Field(default="", description="container image with verl")
    nproc: int = Field(default=0, description="GPUs per run (torchrun); 0: the profile's")
    container_python: str = Field(
        default="python", description="python inside verl_image (runs the model merger)"
    )
    container_torchrun: str = Field(default="torchrun", description="torchrun inside verl_image")
    project_on_pythonpath: bool = Field(
        default=True,
        description="put this source checkout on verl's PYTHONPATH (pkg://coop_dag...)",
    )
    adapters_dir: str = Field(default="", description="empty: the profile's adapters dir")

    def choice(self) -> TrainerChoice:
        profile = resolve_profile()
        kind = self.kind or profile.trainer.kind
        if kind not in TRAINERS:
            raise ProfileError(f"TrainerResource.kind={kind!r}: expected one of {TRAINERS}")
        nproc = self.nproc or profile.trainer.nproc
        if kind == "embedded":
            return TrainerChoice("embedded", nproc=nproc)
        if self.verl_python and self.verl_image:
            raise ProfileError("TrainerResource: set verl_python or verl_image, not both")
        python, image = self.verl_python or None, self.verl_image or None
        if not (python or image):
            if profile.trainer.kind == "verl":
                python, image = profile.trainer.verl_python, profile.trainer.verl_image
            else:
                python = CLUSTER_VERL_PYTHON
        return TrainerChoice("verl", python, image, nproc)

    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else resolve_profile().adapters_dir

    def launcher(self) -> VerlLauncher:
        choice = self.choice()
        if choice.kind != "verl":
            raise ProfileError("TrainerResource.launcher(): the trainer is not verl")
        return VerlLauncher(
            python=choice.verl_python,
            image=choice.verl_image,
            container_python=self.container_python,
            container_torchrun=self.container_torchrun,
            pythonpath=_project_pythonpath() if self.project_on_pythonpath else (),
        )

    def build(self) -> VerlLauncher | TrainerChoice:
        choice = self.choice()
        return self.launcher() if choice.kind == "verl" else choice


class ServerResource(dg.ConfigurableResource):
    """Where the student is served. Empty fields come from the profile."""

    kind: str = Field(default="", description="embedded | vllm; empty: the profile's")
    url: str = Field(default="", description="attach to this running vLLM")
    vllm_python: str = Field(default="", description="launch vllm serve from this python")
    vllm_image: str = Field(default="", description="launch vllm serve from this image")
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = ""
    max_model_len: int = Field(default=0, description="0: the model's own")
    max_lora_rank: int = Field(default=0, description="0: fit the adapter's r, else 32")
    max_loras: int = 4
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER
    reasoning_parser: str = Field(
        default="",
        description="empty (the default): none - a reasoning parser swallowed the student's "
        "tool calls in the seed",
    )
    startup_timeout: float = 1800.0
    adapters_dir: str = Field(default="", description="empty: the profile's adapters dir")

    def choice(self) -> ServerChoice:
        profile = resolve_profile()
        kind = self.kind or profile.server.kind
        if kind not in SERVERS:
            raise ProfileError(f"ServerResource.kind={kind!r}: expected one of {SERVERS}")
        if kind == "embedded":
            return ServerChoice("embedded")
        explicit = [v for v in (self.url, self.vllm_python, self.vllm_image) if v]
        if len(explicit) > 1:
            raise ProfileError("ServerResource: set one of url, vllm_python, vllm_image")
        if explicit:
            return ServerChoice(
                "vllm", self.url or None, self.vllm_python or None, self.vllm_image or None
            )
        if profile.server.kind == "vllm":
            return profile.server
        return ServerChoice("vllm", vllm_python=CLUSTER_VLLM_PYTHON)

    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else resolve_profile().adapters_dir

    def serve_config(self, model: str, *, adapter_rank: int | None = None) -> VllmServeConfig:
        rank = self.max_lora_rank or lora_rank_slot(adapter_rank or 32)
        return VllmServeConfig(
            model=model,
            host=self.host,
            port=self.port,
            served_model_name=self.served_model_name or None,
            max_model_len=self.max_model_len or None,
            max_lora_rank=rank,
            max_loras=self.max_loras,
            tool_call_parser=self.tool_call_parser or None,
            reasoning_parser=self.reasoning_parser or None,
        )

    def launcher(self) -> VllmLauncher:
        choice = self.choice()
        if choice.mode not in ("python", "container"):
            raise ProfileError(f"ServerResource.launcher(): server mode is {choice.mode}")
        adapters = str(self.adapters_root().resolve())
        return VllmLauncher(
            python=choice.vllm_python,
            image=choice.vllm_image,
            mounts=((adapters, adapters, "ro"),) if choice.vllm_image else (),
        )

    def build(
        self, model: str | None = None, *, adapter_rank: int | None = None
    ) -> VllmEngine | VllmServer | ServerChoice:
        choice = self.choice()
        if choice.mode == "embedded":
            return choice
        if choice.mode == "attach":
            return VllmEngine(str(choice.url))
        if not model:
            raise ProfileError("ServerResource.build(model=...): launching vLLM needs a model")
        return VllmServer(
            self.serve_config(model, adapter_rank=adapter_rank),
            self.launcher(),
            startup_timeout=self.startup_timeout,
        )
