"""The serving resource: vLLM serves every model, on the CPU in the embedded default and on GPUs
in the cluster. Only the launch (vLLM's own venv, or its image), the device flags and the
memory sizing differ between profiles.

Process model. An asset that needs a model calls ``serving.ensure(student)``; it returns the
server on ``host:port`` (from this resource's config), which is

- **attached** to when ``url`` (or ``COOP_DAG_VLLM_URL``) is set: a server somebody else runs
  (``coop-dag serve``, a cluster deployment); it must serve that student as its base model;
- otherwise **reused** when this runs directory's serving state records a live server with
  the same identity (model dir, engine python, flags), or **started** as
  ``<vllm python> -m vllm.entrypoints.openai.api_server --model <student dir> ...`` in its own
  session, log and state under ``<runs dir>/serving``.

Every ensure takes a lease for the calling process; at the end of the run (Dagster tears the
resource down after execution) or at the process's exit the lease is returned, and the last
holder stops the server: no server outlives the run that started it, unless ``keep_alive``.
A run executed step by step in subprocesses starts the server in each step that needs it.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from coop_dag.hostcheck import check_server
from coop_dag.profiles import ProfileError, ServerChoice, resolve_profile
from coop_dag.serving import (
    DEFAULT_PROBE_MAX_TOKENS,
    Endpoint,
    ServingError,
    check_base_model,
    ensure_server,
    first_turn_probe,
    release_server,
    stop_server,
)
from coop_dag.vllm import DEFAULT_MAX_MODEL_LEN, EVAL_DTYPE

if TYPE_CHECKING:
    from coop_dag.verl import Command

DEFAULT_PORT = 8100  # not 8000: a hand-started vLLM for a teacher usually sits there


class ServingResource(dg.ConfigurableResource):
    """vLLM for the student. Empty fields come from the profile (``COOP_DAG_PROFILE``,
    ``COOP_DAG_VLLM_URL`` / ``_PYTHON`` / ``_IMAGE`` / ``_DEVICE``)."""

    url: str = Field(
        default="",
        description="attach to the vLLM already running at this URL; empty: reuse or start one "
        "on host:port (COOP_DAG_VLLM_URL when set)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, description="port of the started / reused server")
    state_dir: str = Field(default="", description="server logs and state; empty: <runs>/serving")
    startup_timeout: float = Field(default=900.0, description="seconds to wait for /health")
    reasoning_parser: str = Field(
        default="",
        description="empty (the default): none -- a reasoning parser swallowed the seed "
        "student's tool calls",
    )
    probe_max_tokens: int = Field(
        default=DEFAULT_PROBE_MAX_TOKENS, description="greedy tokens of the swap probe"
    )
    vllm_python: str = Field(default="", description="launch vLLM from this python")
    vllm_image: str = Field(default="", description="launch vLLM from this image")
    device: str = Field(default="", description="cpu | gpu; empty: the profile's")
    dtype: str = Field(
        default=EVAL_DTYPE,
        description="vLLM --dtype: part of the evaluation protocol, the same for every model "
        "served (float32: the dtype the CPU student is trained in)",
    )
    max_model_len: int = Field(default=DEFAULT_MAX_MODEL_LEN, description="vLLM --max-model-len")
    max_lora_rank: int = Field(
        default=16,
        description="vLLM --max-lora-rank (the recipes' rank): on the CPU every LoRA op is "
        "computed at this rank, so a larger slot than the adapters need only costs time",
    )
    max_loras: int = Field(default=2, description="adapters in one batch")
    cpu_kv_cache_gib: int = Field(
        default=2, description="cpu: KV cache size in whole GiB (bounds the server's memory)"
    )
    cpu_threads: int = Field(
        default=1,
        description="cpu: model threads (0: every core). 1 by default: the rollouts' sandboxes "
        "and evaluations share the cores, and OpenMP threads that must wait for a busy core "
        "stall every decoding step",
    )
    gpu_memory_utilization: float = Field(default=0.85, description="gpu: share of GPU memory")
    keep_alive: bool = Field(
        default=False, description="leave a started server running after the run ends"
    )

    _leases: set = PrivateAttr(default_factory=set)

    # -- choices ------------------------------------------------------------------------
    def server_choice(self) -> ServerChoice:
        """The server and how to reach it: fields set here beat the profile's."""
        explicit = [v for v in (self.url, self.vllm_python, self.vllm_image) if v]
        if len(explicit) > 1:
            raise ProfileError("ServingResource: set one of url, vllm_python, vllm_image")
        profile = resolve_profile().server
        device = self.device or profile.device
        if device not in ("cpu", "gpu"):
            raise ProfileError(f"ServingResource.device={device!r}: expected cpu or gpu")
        if explicit:
            return ServerChoice(
                device, self.url or None, self.vllm_python or None, self.vllm_image or None
            )
        return ServerChoice(device, profile.url, profile.vllm_python, profile.vllm_image)

    def state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        return resolve_profile().runs_dir / "serving"

    def probe(self):
        """The fixed held-out first-turn probe (:func:`coop_dag.serving.first_turn_probe`)."""
        return first_turn_probe(max_tokens=self.probe_max_tokens)

    # -- endpoints ----------------------------------------------------------------------
    def ensure(self, student: str, *, log=None) -> Endpoint:
        """A running vLLM whose base model is ``student`` (see the module docstring)."""
        from coop_dag.students import get_student
        from coop_dag.vllm import VllmEngine, VllmError

        choice = self.server_choice()
        resolved = get_student(student)
        expect = [resolved.name, student, str(resolved.model_dir)]
        if choice.url:
            engine = VllmEngine(choice.url)
            try:
                engine.wait_until_healthy(min(self.startup_timeout, 60.0), interval=1.0)
            except VllmError as exc:
                raise ServingError(f"serving resource url={choice.url}: {exc}") from None
            base = check_base_model(engine, expect, str(resolved.model_dir))
            return Endpoint(engine.url, base, "vllm", False)
        check_server(choice)  # GPUs / Docker the choice needs: missing, fail before launching
        if choice.vllm_python and not Path(choice.vllm_python).exists():
            raise ServingError(
                f"vLLM's python {choice.vllm_python} does not exist: build its venv with "
                "`bash scripts/vllm_venv.sh` (the README's commands do), or point "
                "COOP_DAG_VLLM_PYTHON at another vLLM environment"
            )
        command = self.vllm_command(str(resolved.model_dir), served_model_name=resolved.name)
        endpoint = ensure_server(
            list(command.argv),
            host=self.host,
            port=self.port,
            state_dir=self.state_root(),
            expect_ids=expect,
            expect_root=str(resolved.model_dir),
            startup_timeout=self.startup_timeout,
            env=dict(command.env),
            log=log,
        )
        self._hold(self.state_root(), self.port)
        return endpoint

    def vllm_command(self, model: str, *, served_model_name: str | None = None) -> Command:
        """The vLLM process this resource launches for ``model`` (vLLM's own python, or its
        image with the adapters directory mounted at the same path)."""
        from coop_dag.vllm import VllmLauncher, VllmServeConfig, lora_rank_slot, serve_command

        choice = self.server_choice()
        if choice.mode not in ("python", "container"):
            raise ProfileError(f"ServingResource.vllm_command(): server mode is {choice.mode}")
        adapters = str(resolve_profile().adapters_dir.resolve())
        launcher = VllmLauncher(
            python=choice.vllm_python,
            image=choice.vllm_image,
            mounts=((adapters, adapters, "ro"),) if choice.vllm_image else (),
        )
        config = VllmServeConfig(
            model=model,
            host=self.host,
            port=self.port,
            served_model_name=served_model_name,
            max_model_len=self.max_model_len,
            max_lora_rank=lora_rank_slot(self.max_lora_rank),
            max_loras=self.max_loras,
            reasoning_parser=self.reasoning_parser or None,
            dtype=self.dtype or None,
            device=choice.device,
            cpu_kv_cache_gib=self.cpu_kv_cache_gib,
            cpu_threads=self.cpu_threads,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        return serve_command(config, launcher)

    # -- lifecycle ----------------------------------------------------------------------
    def _hold(self, state: Path, port: int) -> None:
        if self.keep_alive:
            return
        key = (str(state), int(port))
        if key not in self._leases:
            self._leases.add(key)
            atexit.register(release_server, state, port)

    def release(self) -> None:
        """Return this process's leases; the last holder stops the server."""
        for state, port in sorted(self._leases):
            release_server(state, port)
        self._leases.clear()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.release()

    def stop(self) -> bool:
        """Stop the server started on ``port`` for this runs directory, whoever uses it."""
        return stop_server(self.state_root(), self.port)
