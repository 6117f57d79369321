"""The student's server from plain settings (:class:`ServeSettings`): what the serving resource
and `coop-dag eval` both launch or attach to (coop_dag never imports Dagster;
``resources/serving.py`` wraps this), and how an adapter is served for rollouts (merged into its
base on a server of its own, or as a LoRA on the base's server).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coop_dag.serving.endpoints import Endpoint, check_base_model
from coop_dag.serving.errors import ServingError
from coop_dag.serving.server import ensure_server
from coop_dag.serving.swap import ensure_loaded
from coop_dag.serving.vllm import VllmEngine, VllmError
from coop_dag.serving.vllm_launch import (
    DEFAULT_MAX_MODEL_LEN,
    EVAL_DTYPE,
    VllmLauncher,
    VllmServeConfig,
    lora_rank_slot,
    serve_command,
)

__all__ = ["DEFAULT_PORT", "ServeSettings"]

LogFn = Callable[[str], None]

DEFAULT_PORT = 8100  # not 8000: a hand-started vLLM for a teacher usually sits there


@dataclass(frozen=True)
class ServeSettings:
    """How the student's vLLM is reached or launched. Empty strings fall back to the profile
    (``COOP_DAG_PROFILE``, ``COOP_DAG_VLLM_URL`` / ``_PYTHON`` / ``_IMAGE`` / ``_DEVICE``); the
    defaults are the evaluation protocol's (README "Serving: vLLM everywhere")."""

    url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    startup_timeout: float = 900.0
    reasoning_parser: str = ""
    vllm_python: str = ""
    vllm_image: str = ""
    device: str = ""
    dtype: str = EVAL_DTYPE
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    max_lora_rank: int = 16
    max_loras: int = 2
    cpu_kv_cache_gib: int = 2
    cpu_threads: int = 1
    gpu_memory_utilization: float = 0.85
    adapters_as: str = ""
    merged_port: int = 0

    def merges_adapters(self) -> bool:
        """Whether held-out rollouts serve an adapter merged into its base (on a server of its
        own, :meth:`merged_port_or_next`) rather than as a LoRA on the base's server.
        ``adapters_as``: ``merged`` | ``lora`` | empty: merged when this launches vLLM on the
        CPU (its LoRA kernels made an adapter ~3x slower than the same weights merged), LoRA
        on GPUs and on an attached server (whose model is not ours to change)."""
        from coop_dag.config.profiles import ProfileError

        choice = self.server_choice()
        if self.adapters_as not in ("", "merged", "lora"):
            raise ProfileError(
                f"ServingResource.adapters_as={self.adapters_as!r}: expected merged, lora or empty"
            )
        if self.adapters_as == "merged" and choice.mode != "python":
            raise ProfileError(
                "ServingResource.adapters_as=merged needs a vLLM this resource launches from a "
                f"python (the server mode is {choice.mode}); use adapters_as=lora"
            )
        if self.adapters_as:
            return self.adapters_as == "merged"
        return choice.mode == "python" and choice.device == "cpu"

    def ensure_adapter(
        self,
        student: str,
        adapter_dir: str | os.PathLike,
        state_dir: str | os.PathLike,
        *,
        log: LogFn | None = None,
    ) -> tuple[Endpoint, str, int | None]:
        """An endpoint that serves the adapter at ``adapter_dir`` (on ``student``) under its
        content name, for rollouts: ``(endpoint, "merged" | "lora", leased port or None)``.
        Merged (:meth:`merges_adapters`): the adapter folded into its base
        (:func:`coop_dag.training.adapters.merged_model`) on a server of its own on
        :meth:`merged_port_or_next`; LoRA: loaded on the base's server (put back under the
        same name if a restarted server lost it). Return the lease with
        :func:`coop_dag.serving.leases.release_server` on the port given."""
        from dataclasses import replace

        from coop_dag.training.adapters import adapter_name, merged_model
        from coop_dag.training.students import get_student

        name = adapter_name(adapter_dir)
        if self.merges_adapters():
            merged = merged_model(adapter_dir, get_student(student).model_dir)
            if log:
                log(f"serving {name} merged into its base: {merged}")
            settings = replace(self, port=self.merged_port_or_next())
            endpoint, _ = settings.ensure(
                student, state_dir, log=log, model_dir=merged, served_name=name
            )
            return endpoint, "merged", settings.port
        endpoint, leased = self.ensure(student, state_dir, log=log)
        ensure_loaded(endpoint.url, name, adapter_dir)
        return endpoint, "lora", self.port if leased else None

    def merged_port_or_next(self) -> int:
        """The port of the merged-adapter server: ``merged_port``, else the next one up."""
        return self.merged_port or self.port + 1

    def server_choice(self):
        """The server and how to reach it (:class:`coop_dag.config.profiles.ServerChoice`): settings
        given here beat the profile's."""
        from coop_dag.config.profiles import ProfileError, ServerChoice, resolve_profile

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

    def command(self, model: str, *, served_model_name: str | None = None):
        """The vLLM process launched for ``model`` (vLLM's own python, or its image with the
        adapters directory mounted at the same path): a `util.containers.Command`."""
        from coop_dag.config.profiles import ProfileError, resolve_profile

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

    def ensure(
        self,
        student: str,
        state_dir: str | os.PathLike,
        *,
        log: LogFn | None = None,
        model_dir: str | os.PathLike | None = None,
        served_name: str | None = None,
    ):
        """A running vLLM whose base model is ``student``: attached to (``url``), or reused /
        started on ``host:port`` with a lease for this process under ``state_dir`` (return it
        with :func:`coop_dag.serving.leases.release_server`). Returns ``(endpoint, leased)``.
        ``model_dir`` (with ``served_name``) serves that directory instead of the student's own,
        e.g. an adapter merged into it (:func:`coop_dag.training.adapters.merged_model`)."""
        from coop_dag.config.hostcheck import check_server
        from coop_dag.training.students import get_student

        choice = self.server_choice()
        resolved = get_student(student)
        expect = [resolved.name, student, str(resolved.model_dir)]
        root, name = str(resolved.model_dir), resolved.name
        if model_dir is not None:
            if choice.url:
                raise ServingError(
                    f"cannot serve {model_dir} on the attached server {choice.url}: its model "
                    "is not ours to change (serve adapters as LoRA there)"
                )
            root, name = str(model_dir), served_name or Path(model_dir).name
            expect = [name, root]
        if choice.url:
            engine = VllmEngine(choice.url)
            try:
                engine.wait_until_healthy(min(self.startup_timeout, 60.0), interval=1.0)
            except VllmError as exc:
                raise ServingError(f"serving resource url={choice.url}: {exc}") from None
            base = check_base_model(engine, expect, str(resolved.model_dir))
            return Endpoint(engine.url, base, "vllm", False), False
        check_server(choice)  # GPUs / Docker the choice needs: missing, fail before launching
        if choice.vllm_python and not Path(choice.vllm_python).exists():
            raise ServingError(
                f"vLLM's python {choice.vllm_python} does not exist: build its venv with "
                "`bash scripts/vllm_venv.sh` (the README's commands do), or point "
                "COOP_DAG_VLLM_PYTHON at another vLLM environment"
            )
        command = self.command(root, served_model_name=name)
        endpoint = ensure_server(
            list(command.argv),
            host=self.host,
            port=self.port,
            state_dir=state_dir,
            expect_ids=expect,
            expect_root=root,
            startup_timeout=self.startup_timeout,
            env=dict(command.env),
            log=log,
        )
        return endpoint, True
