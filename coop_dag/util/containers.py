"""Containers and commands, the one copy both engines launch with: a `Command` (argv plus
environment, optionally a named container), the `docker run` line for one, and the variables
every container gets by name. verl (`training.verl_launch`) and vLLM (`serving.vllm_launch`)
use it; it imports neither. Standard library only."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Environment variables handed to a container by name only (`-e NAME`): docker copies the
# caller's value when set, and no secret ever appears on a command line. Passed into any
# container we launch (vLLM's too); verl's also gets its Pipes variables (verl_launch.PIPES_ENV).
DEFAULT_PASS_ENV = ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME", "WANDB_API_KEY")


@dataclass(frozen=True)
class Command:
    """A process to start: argv, plus environment variables set on top of the caller's."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    container_name: str | None = None  # set when argv is a `docker run`: removed on abort

    def shell(self) -> str:
        """A copy-pasteable shell line (env assignments first), for logs and docs."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


def _mount_list(
    mounts: Iterable[tuple[str, str, str]],
) -> list[tuple[str, str, str]]:
    """Dedupe (host, container, mode) mounts; a path mounted rw and ro ends up rw."""
    seen: dict[tuple[str, str], str] = {}
    for host, container, mode in mounts:
        key = (os.fspath(host), os.fspath(container))
        if key in seen and seen[key] == "rw":
            continue
        seen[key] = mode
    return [(h, c, m) for (h, c), m in seen.items()]


def container_run_argv(
    image: str,
    command: Sequence[str],
    *,
    name: str | None = None,
    gpus: str | None = "all",
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    mounts: Iterable[tuple[str, str, str]] = (),
    publish: Sequence[str] = (),
    docker_args: Sequence[str] = ("--rm", "--ipc=host"),
    workdir: str | None = None,
    entrypoint: str | None = None,
    docker: str = "docker",
) -> list[str]:
    """`docker run` in the foreground (logs on stdout; `--rm` cleans up):
    ``docker run <docker_args> [--gpus G] [--name N] [-e K=V]... [-e NAME]... [-v h:c:m]...
    [-p P]... [-w W] [--entrypoint E] <image> <command...>``."""
    argv = [docker, "run", *docker_args]
    if gpus:
        argv += ["--gpus", gpus]
    if name:
        argv += ["--name", name]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    for key in pass_env:
        argv += ["-e", key]
    for host, container, mode in _mount_list(mounts):
        argv += ["-v", f"{host}:{container}:{mode}"]
    for port in publish:
        argv += ["-p", port]
    if workdir:
        argv += ["-w", workdir]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    argv += [image, *command]
    return argv


def remove_container(name: str, *, docker: str = "docker") -> None:
    """``docker rm -f name``, quietly (the docker client dying does not stop its container)."""
    subprocess.run(
        [docker, "rm", "-f", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
