"""Where and how verl runs: `VerlLauncher`, the torchrun and export commands, `run_command`.

verl runs in its own environment (a separate Python, or a container image): installing it
next to Dagster downgrades antlr4 and breaks Dagster's selection parser. This module never
imports verl; it builds the command lines and runs them as subprocesses.

Training: ``torchrun --standalone --nnodes=1 --nproc_per_node=N -m coop_dag.training.verl_pipes
<hydra overrides>`` (`train_command`; `TRAINER_MODULE` runs ``verl.trainer.sft_trainer``'s
main in process, rank 0 reporting through Dagster Pipes, with the overrides of a
`coop_dag.training.verl_config.VerlSFTConfig`). Export: the same entry with ``--export-only``
(`merge_command`), which runs ``python -m verl.model_merger merge --backend fsdp --local_dir
<global_step_N> --target_dir <dir>`` in process (verl 0.9.1's
``verl/model_merger/base_model_merger.py`` CLI flags). The project must be importable in
verl's environment (`VerlLauncher.pythonpath`, or installed there).
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from coop_dag.training.verl_config import VerlError, VerlSFTConfig, device_environment
from coop_dag.util.containers import (
    DEFAULT_PASS_ENV,
    Command,
    container_run_argv,
    remove_container,
)
from coop_dag.util.processes import start_streaming, stop_group

__all__ = [
    "MERGER_MODULE",
    "TRAINER_MODULE",
    "LaunchSession",
    "LogFn",
    "VerlLauncher",
    "check_launcher",
    "merge_command",
    "run_command",
    "train_command",
]

TRAINER_MODULE = "coop_dag.training.verl_pipes"  # verl.trainer.sft_trainer's main + Pipes reporting
VERL_TRAINER_MODULE = "verl.trainer.sft_trainer"  # what TRAINER_MODULE runs, in process
MERGER_MODULE = "verl.model_merger"  # what TRAINER_MODULE exports with, in process

# Dagster Pipes' bootstrap variables, handed to verl's container by name only (`-e NAME`,
# beside `DEFAULT_PASS_ENV`): a launch through `run_verl`'s `session` sets them
# (their values never reach a command line or verl_command.txt); unset, docker sets nothing.
PIPES_ENV = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")  # verl_pipes.PIPES_ENV

LogFn = Callable[[str], None]
# One verl launch's session (Dagster Pipes, opened by the asset): called with a directory the
# launch can write to (inside output_dir: mounted into a container at the same path), it
# yields the environment variables the launch gets on top of the command's.
LaunchSession = Callable[[Path], AbstractContextManager[Mapping[str, str]]]


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class VerlLauncher:
    """Where verl runs: a Python executable of its own environment (`python`), or a
    container image (`image`) started with `docker run --gpus ...`. Exactly one is set.

    `pythonpath`: directories put on verl's PYTHONPATH so ``pkg://coop_dag.tito.dataset``
    imports (a source checkout; not needed where the project is installed in verl's
    environment, as in deploy/Dockerfile.gpu). In a container, paths are mounted at the
    same path (identity mounts), so every path in the config means the same file inside.
    """

    python: str | None = None
    image: str | None = None
    container_python: str = "python"  # inside the image: runs the model merger
    container_torchrun: str = "torchrun"  # inside the image
    docker: str = "docker"
    gpus: str = "all"
    docker_args: tuple[str, ...] = ("--rm", "--ipc=host")
    mounts: tuple[tuple[str, str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = (*DEFAULT_PASS_ENV, *PIPES_ENV)
    pythonpath: tuple[str, ...] = ()
    name_prefix: str = "coop-dag-verl"

    def __post_init__(self) -> None:
        if bool(self.python) == bool(self.image):
            raise VerlError(
                "VerlLauncher needs exactly one of python= (verl's own environment) or "
                f"image= (a container image); got python={self.python!r}, image={self.image!r}"
            )

    @property
    def kind(self) -> str:
        return "python" if self.python else "container"

    def describe(self) -> str:
        return f"python {self.python}" if self.python else f"image {self.image}"

    def _python_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**self.env, **(extra or {})}
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return env

    def _container(
        self,
        command: Sequence[str],
        mounts: Iterable[tuple[str, str, str]],
        name: str | None,
        gpus: bool,
        extra_env: Mapping[str, str] | None = None,
    ) -> Command:
        name = name or f"{self.name_prefix}-{uuid.uuid4().hex[:8]}"
        env = {**self.env, **(extra_env or {})}
        extra_mounts = [(p, p, "ro") for p in self.pythonpath]
        if self.pythonpath:
            env["PYTHONPATH"] = ":".join(self.pythonpath)
        argv = container_run_argv(
            str(self.image),
            command,
            name=name,
            gpus=self.gpus if gpus else None,
            env=env,
            pass_env=self.pass_env,
            mounts=[*mounts, *extra_mounts, *self.mounts],
            docker_args=self.docker_args,
            docker=self.docker,
        )
        return Command(tuple(argv), {}, container_name=name)


def _executable(python: str) -> str:
    """A path to a python made absolute (verl runs in its output dir); a bare name stays,
    for PATH lookup."""
    return os.path.abspath(python) if os.sep in python else python


def _parent_dirs(paths: Iterable[str]) -> list[str]:
    return [os.path.dirname(os.path.abspath(p)) or "/" for p in paths]


def train_command(
    cfg: VerlSFTConfig,
    launcher: VerlLauncher,
    *,
    name: str | None = None,
    export_to: str | os.PathLike | None = None,
) -> Command:
    """The torchrun command for `cfg` in `launcher`'s environment or container (`name`: the
    container's name; a random one when None): ``-m coop_dag.training.verl_pipes`` (verl's
    ``sft_trainer`` in process, rank 0 reporting through Dagster Pipes when launched with it)
    with `cfg`'s overrides; `export_to`: rank 0 then exports the last checkpoint's adapter to
    ``<export_to>/lora_adapter`` with verl's model merger. ``cfg.device == "cpu"``: `CPU_ENV`
    on top (the overrides are in ``cfg``), and a container gets no GPUs."""
    cfg.validate()
    device_env = device_environment(cfg.device)
    export = ["--export-to", os.path.abspath(os.fspath(export_to))] if export_to else []
    torchrun_args = [
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={cfg.nproc_per_node}",
        "-m",
        TRAINER_MODULE,
        *export,
        *cfg.overrides(),
    ]
    if launcher.python:
        argv = (_executable(launcher.python), "-m", "torch.distributed.run", *torchrun_args)
        return Command(argv, launcher._python_env(device_env))
    mounts: list[tuple[str, str, str]] = [
        (d, d, "ro") for d in _parent_dirs([*cfg.train_files, *cfg.val_files])
    ]
    if os.path.isabs(cfg.model_path):
        mounts.append((cfg.model_path, cfg.model_path, "ro"))
    out = os.path.abspath(cfg.output_dir)
    mounts.append((out, out, "rw"))
    if export:
        mounts.append((export[1], export[1], "rw"))
    return launcher._container(
        [launcher.container_torchrun, *torchrun_args], mounts, name,
        gpus=cfg.device != "cpu", extra_env=device_env,
    )  # fmt: skip


def merge_command(
    checkpoint_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    launcher: VerlLauncher,
    *,
    backend: str = "fsdp",
    trust_remote_code: bool = False,
    name: str | None = None,
    device: str = "cuda",
) -> Command:
    """The export of a saved checkpoint alone (a run killed after its last save): ``python -m
    coop_dag.training.verl_pipes --export-only <global_step_N> --export-to <dir>`` runs ``python -m
    verl.model_merger merge --backend fsdp --local_dir <global_step_N> --target_dir <dir>`` in
    process and reports the adapter (``<target_dir>/lora_adapter``) and the run's loss curve
    through Dagster Pipes when launched with it. The merger works on the CPU either way;
    ``device="cpu"`` sets `CPU_ENV` so that ``import verl`` in it resolves the same platform
    the trainer ran on. In a container the checkpoint's parent (the run's output dir, with
    its metrics and the Pipes channel) and the target are mounted read-write."""
    device_env = device_environment(device)
    if backend not in ("fsdp", "megatron"):
        raise VerlError(f"model merger backend must be 'fsdp' or 'megatron', got {backend!r}")
    ckpt = os.path.abspath(os.fspath(checkpoint_dir))
    target = os.path.abspath(os.fspath(target_dir))
    args = [
        "-m", TRAINER_MODULE,
        "--export-only", ckpt,
        "--export-to", target,
        "--backend", backend,
    ]  # fmt: skip
    if trust_remote_code:
        args.append("--trust-remote-code")
    if launcher.python:
        return Command((_executable(launcher.python), *args), launcher._python_env(device_env))
    out = os.path.dirname(ckpt)
    mounts = [(out, out, "rw"), (target, target, "rw")]
    return launcher._container(
        [launcher.container_python, *args], mounts, name, gpus=False, extra_env=device_env
    )


def check_launcher(launcher: VerlLauncher) -> None:
    """Fail before anything is prepared when verl's own python is not there."""
    if launcher.python and not os.access(launcher.python, os.X_OK):
        raise VerlError(
            f"verl's environment is missing: {launcher.python} is not an executable python. "
            "On this machine run `bash scripts/verl_venv.sh` (it builds .venv-verl, or "
            "$COOP_DAG_VERL_VENV); elsewhere set COOP_DAG_VERL_PYTHON to verl's python."
        )


# --------------------------------------------------------------------------- running


def _kill(proc: subprocess.Popen, command: Command, docker: str) -> None:
    stop_group(proc, grace=10)
    if command.container_name:  # the docker client dying does not stop its container
        remove_container(command.container_name, docker=docker)


def run_command(
    command: Command,
    *,
    what: str,
    on_log: LogFn | None = None,
    timeout: float | None = None,
    tail: int = 60,
    cwd: str | os.PathLike | None = None,
    docker: str = "docker",
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run `command` in a process group of its own, streaming each output line (stdout and
    stderr merged) to `on_log`; `env`: variables on top of the command's that are not part of
    it (a Pipes session's: never logged). Returns the last `tail` lines; raises VerlError with
    them if it fails or times out. Anything raised while it runs -- a Dagster run's
    cancellation arrives as an interrupt here, or `on_log` raising -- stops the whole group
    (SIGTERM, SIGKILL after 10 s; a container is removed) before it propagates."""
    last: collections.deque[str] = collections.deque(maxlen=tail)
    env = {**os.environ, **command.env, **(env or {})}
    try:
        proc = start_streaming(command.argv, cwd=cwd, env=env)
    except OSError as exc:
        raise VerlError(f"{what}: cannot start {command.argv[0]!r}: {exc}") from exc
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill(proc, command, docker)

    timer = threading.Timer(timeout, on_timeout) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            last.append(line)
            if on_log is not None:
                on_log(line)
        rc = proc.wait()
    except BaseException:
        _kill(proc, command, docker)
        raise
    finally:
        if timer:
            timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if timed_out.is_set() or rc != 0:
        why = f"timed out after {timeout:g}s" if timed_out.is_set() else f"exit code {rc}"
        shown = "\n".join(last) if last else "(no output)"
        raise VerlError(
            f"{what} failed ({why}): {command.shell()}\n--- last {len(last)} lines ---\n{shown}"
        )
    return list(last)
