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

``ensure`` is also the health check each stage runs before using the server: a server this
runs directory started that has died since is started again (its death logged with its log's
last lines), one that was up and no longer answers ``/health`` is killed and started again,
and a start that fails raises with the log's tail (docs/reliability.md).

Every ensure takes a lease for the calling process; at the end of the run (Dagster tears the
resource down after execution) or at the process's exit the lease is returned, and the last
holder stops the server: no server outlives the run that started it, unless ``keep_alive``.
A run executed step by step in subprocesses starts the server in each step that needs it.
"""

from __future__ import annotations

import atexit
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from coop_dag.config.profiles import ServerChoice, resolve_profile
from coop_dag.serving.endpoints import Endpoint
from coop_dag.serving.greedy import DEFAULT_PROBE_MAX_TOKENS
from coop_dag.serving.leases import release_server, stop_server
from coop_dag.serving.probe import first_turn_probe
from coop_dag.serving.settings import DEFAULT_PORT, ServeSettings
from coop_dag.serving.vllm_launch import DEFAULT_MAX_MODEL_LEN, EVAL_DTYPE

if TYPE_CHECKING:
    from coop_dag.util.containers import Command


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
    adapters_as: str = Field(
        default="",
        description="held-out rollouts serve an adapter as: merged (folded into its base, "
        "on a server of its own) | lora (on the base's server); empty: merged when vLLM "
        "is launched here on the CPU (its LoRA kernels cost ~3x), lora otherwise",
    )
    merged_port: int = Field(default=0, description="port of the merged model's server; 0: port+1")

    _leases: set = PrivateAttr(default_factory=set)

    # -- choices ------------------------------------------------------------------------
    def settings(self) -> ServeSettings:
        """This resource's fields as the plain settings `coop_dag.serving.settings` launches from
        (the same code `coop-dag eval` uses)."""
        return ServeSettings(
            url=self.url,
            host=self.host,
            port=self.port,
            startup_timeout=self.startup_timeout,
            reasoning_parser=self.reasoning_parser,
            vllm_python=self.vllm_python,
            vllm_image=self.vllm_image,
            device=self.device,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            max_lora_rank=self.max_lora_rank,
            max_loras=self.max_loras,
            cpu_kv_cache_gib=self.cpu_kv_cache_gib,
            cpu_threads=self.cpu_threads,
            gpu_memory_utilization=self.gpu_memory_utilization,
            adapters_as=self.adapters_as,
            merged_port=self.merged_port,
        )

    def server_choice(self) -> ServerChoice:
        """The server and how to reach it: fields set here beat the profile's."""
        return self.settings().server_choice()

    def state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        return resolve_profile().runs_dir / "serving"

    def probe(self):
        """The fixed held-out first-turn probe (`serving.probe.first_turn_probe`)."""
        return first_turn_probe(max_tokens=self.probe_max_tokens)

    # -- endpoints ----------------------------------------------------------------------
    def ensure(self, student: str, *, log=None) -> Endpoint:
        """A running vLLM whose base model is ``student`` (see the module docstring)."""
        endpoint, leased = self.settings().ensure(student, self.state_root(), log=log)
        if leased:
            self._hold(self.state_root(), self.port)
        return endpoint

    def merges_adapters(self) -> bool:
        """Held-out rollouts serve adapters merged (:meth:`ServeSettings.merges_adapters`)."""
        return self.settings().merges_adapters()

    @contextmanager
    def serve_adapter(self, student: str, adapter_dir: str, *, log=None):
        """``(endpoint, served_as)`` for rollouts of the adapter at ``adapter_dir`` under its
        content name (:meth:`ServeSettings.ensure_adapter`): merged into ``student`` on a
        server of its own that stops on leaving unless another process holds it (each merged
        model is rolled out once: its memory is not kept), or as a LoRA on the base's server,
        which lives on with the run."""
        state = self.state_root()
        endpoint, served_as, port = self.settings().ensure_adapter(
            student, adapter_dir, state, log=log
        )
        if served_as == "lora" and port is not None:
            self._hold(state, port)
        try:
            yield endpoint, served_as
        finally:
            if served_as == "merged":
                release_server(state, port)

    def vllm_command(self, model: str, *, served_model_name: str | None = None) -> Command:
        """The vLLM process this resource launches for ``model`` (vLLM's own python, or its
        image with the adapters directory mounted at the same path)."""
        return self.settings().command(model, served_model_name=served_model_name)

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
