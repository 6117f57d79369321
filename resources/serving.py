"""The serving resource: where `served_adapter` (and `student_rollouts`) reach the student.

Process model (embedded default). An asset that needs the server calls
``serving.ensure(student)``; it returns the server on ``host:port`` (fixed, from this
resource's config), which is

- **reused** when it answers ``/health`` and ``/v1/models`` lists that student as its base
  model (a server for another student on the port is an error naming both: give variants
  with different students different ports, or run them one after the other);
- otherwise **started** as ``python -m coop_dag.serve --student S --host H --port P`` in its
  own session (setsid), stdout/stderr appended to ``<state_dir>/server-<port>.log``, pid in
  ``<state_dir>/server-<port>.json``, and **left running**: it outlives the step and the run,
  so later steps (``student_rollouts``) and later runs reuse it instead of reloading the
  model. A file lock per port makes parallel steps start it once.

``serving.stop()`` (or ``kill`` of the recorded pid) ends it; a new run simply starts it
again. Adapters it held are gone after a restart, which is why `served_adapter`'s output
records the adapter path and `coop_dag.serving.ensure_loaded` puts it back.

Cluster. ``kind="vllm"`` (or ``COOP_DAG_SERVER=vllm`` / profile ``cluster``): with a ``url``
(or ``COOP_DAG_VLLM_URL``) the resource attaches to a running vLLM; otherwise it starts
``vllm serve <student model dir> --enable-lora ...`` (vLLM's own python, or its image)
the same detached way. ``url`` also attaches to an embedded server someone started by hand
(``coop-dag serve``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from coop_dag.profiles import (
    CLUSTER_VLLM_PYTHON,
    SERVERS,
    ProfileError,
    ServerChoice,
    resolve_profile,
)
from coop_dag.serving import (
    DEFAULT_PROBE_MAX_TOKENS,
    Endpoint,
    ServingError,
    check_base_model,
    ensure_embedded_server,
    ensure_server,
    first_turn_probe,
    stop_server,
)

if TYPE_CHECKING:
    from coop_dag.verl import Command

DEFAULT_EMBEDDED_PORT = 8100  # not 8000: the vllm-native teacher variant expects vLLM there


class ServingResource(dg.ConfigurableResource):
    """Serving engine for the student. Empty fields come from the profile
    (``COOP_DAG_PROFILE`` / ``COOP_DAG_SERVER`` / ``COOP_DAG_VLLM_*``)."""

    kind: str = Field(default="", description="embedded | vllm; empty: the profile's")
    url: str = Field(
        default="",
        description="attach to the server already running at this URL (embedded or vLLM); "
        "empty: reuse or start one on host:port (vLLM: COOP_DAG_VLLM_URL when set)",
    )
    host: str = "127.0.0.1"
    port: int = Field(
        default=DEFAULT_EMBEDDED_PORT,
        description="fixed port of the started / reused server (one student per port)",
    )
    state_dir: str = Field(
        default="", description="server logs and pid files; empty: <runs dir>/serving"
    )
    startup_timeout: float = Field(default=900.0, description="seconds to wait for /health")
    reasoning_parser: str = Field(
        default="",
        description="empty (the default): none -- a reasoning parser swallowed the seed "
        "student's tool calls",
    )
    default_max_tokens: int = Field(
        default=0, description="embedded: max_tokens when a request gives none (0: 1024)"
    )
    probe_max_tokens: int = Field(
        default=DEFAULT_PROBE_MAX_TOKENS, description="greedy tokens of the swap probe"
    )
    threads: int = Field(
        default=1,
        description="embedded: torch threads of the server (0: torch's default, one per "
        "core). 1 by default: on a small shared CPU box the server competes with the run "
        "and its sandboxes, and oversubscribed OpenMP threads made decoding ~25x slower",
    )
    max_batch: int = Field(
        default=0,
        description="embedded: concurrent requests generated as one batch (0: the server's "
        "default, 32); the rollouts' agents share the batch",
    )
    batch_gap: float = Field(
        default=1.0,
        description="embedded: a batch starts once no request arrived for this many seconds. "
        "Rollout agents answer a finished batch over a second or so (tools, sandboxes, the "
        "pairs' evaluations); one that misses a batch waits for the whole of it",
    )
    batch_window: float = Field(
        default=8.0, description="embedded: at most this many seconds a batch waits for company"
    )
    vllm_python: str = Field(default="", description="launch vllm serve from this python")
    vllm_image: str = Field(default="", description="launch vllm serve from this image")
    max_lora_rank: int = Field(default=64, description="vLLM --max-lora-rank when launching")

    # -- choices ------------------------------------------------------------------------
    def server_kind(self) -> str:
        kind = self.kind or resolve_profile().server.kind
        if kind not in SERVERS:
            raise ProfileError(f"ServingResource.kind={kind!r}: expected one of {SERVERS}")
        return kind

    def server_choice(self) -> ServerChoice:
        """The server and how to reach it: fields set here beat the profile's. ``url`` with
        ``kind="embedded"`` attaches to an embedded server (mode stays ``embedded``)."""
        kind = self.server_kind()
        explicit = [v for v in (self.url, self.vllm_python, self.vllm_image) if v]
        if len(explicit) > 1:
            raise ProfileError("ServingResource: set one of url, vllm_python, vllm_image")
        if kind == "embedded":
            return ServerChoice("embedded", self.url or None)
        if explicit:
            return ServerChoice(
                "vllm", self.url or None, self.vllm_python or None, self.vllm_image or None
            )
        profile = resolve_profile().server
        if profile.kind == "vllm":
            return profile
        return ServerChoice("vllm", vllm_python=CLUSTER_VLLM_PYTHON)

    def state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        return resolve_profile().runs_dir / "serving"

    def probe(self):
        """The fixed held-out first-turn probe (:func:`coop_dag.serving.first_turn_probe`)."""
        return first_turn_probe(max_tokens=self.probe_max_tokens)

    # -- endpoints ----------------------------------------------------------------------
    def ensure(self, student: str, *, log=None) -> Endpoint:
        """A running server whose base model is ``student`` (see the module docstring)."""
        from coop_dag.students import get_student
        from coop_dag.vllm import VllmEngine, VllmError

        choice = self.server_choice()
        kind = choice.kind
        resolved = get_student(student)
        expect = [resolved.name, student, str(resolved.model_dir)]
        url = choice.url
        if url:
            engine = VllmEngine(url)
            try:
                engine.wait_until_healthy(min(self.startup_timeout, 60.0), interval=1.0)
            except VllmError as exc:
                raise ServingError(f"serving resource url={url}: {exc}") from None
            base = check_base_model(engine, expect, str(resolved.model_dir))
            return Endpoint(engine.url, base, kind, False)
        if kind == "embedded":
            extra: list[str] = []
            if self.reasoning_parser:
                extra += ["--reasoning-parser", self.reasoning_parser]
            if self.threads:
                extra += ["--threads", str(self.threads)]
            if self.default_max_tokens:
                extra += ["--default-max-tokens", str(self.default_max_tokens)]
            if self.max_batch:
                extra += ["--max-batch", str(self.max_batch)]
            extra += ["--batch-gap", str(self.batch_gap), "--batch-window", str(self.batch_window)]
            return ensure_embedded_server(
                student,
                host=self.host,
                port=self.port,
                state_dir=self.state_root(),
                extra_args=extra,
                startup_timeout=self.startup_timeout,
                log=log,
            )
        return self._ensure_vllm(resolved, expect, log)

    def vllm_command(self, model: str, *, served_model_name: str | None = None) -> Command:
        """The ``vllm serve`` process this resource launches for ``model`` (vLLM's own python,
        or its image with the adapters directory mounted at the same path)."""
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
            max_lora_rank=lora_rank_slot(self.max_lora_rank),
            reasoning_parser=self.reasoning_parser or None,
        )
        return serve_command(config, launcher)

    def _ensure_vllm(self, student, expect: list[str], log) -> Endpoint:
        command = self.vllm_command(str(student.model_dir), served_model_name=student.name)
        return ensure_server(
            list(command.argv),
            host=self.host,
            port=self.port,
            state_dir=self.state_root(),
            expect_ids=expect,
            expect_root=str(student.model_dir),
            kind="vllm",
            startup_timeout=self.startup_timeout,
            env=dict(command.env),
            log=log,
        )

    def stop(self) -> bool:
        """Stop the server this resource started on ``port`` (by its pid file)."""
        return stop_server(self.state_root(), self.port)
