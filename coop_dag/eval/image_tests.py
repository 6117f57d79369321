"""A task's tests in its own Docker image, as CooperBench runs them (the docker evaluation
backend of `coop_dag.eval.evaluate`): one fresh container per feature, the feature's
``tests.patch`` and the merged diff copied into ``/patches``, then the image's runner."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coop_dag.agent.sandbox.base import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, SandboxError
from coop_dag.agent.sandbox.docker import (
    docker_cp_argv,
    docker_create_argv,
    docker_rm_argv,
    docker_start_argv,
)
from coop_dag.agent.sandbox.process import _run_process, _to_result

log = logging.getLogger(__name__)

IMAGE_RUNNER = "/usr/local/bin/runner.sh"  # where CooperBench's images keep the task's runner
IMAGE_PATCHES = "/patches"  # where the runner reads its patch arguments

# With no network, `pip` (and `pip3`) in the runner -- CooperBench's `pip install -e ".[dev]"`,
# which the image's Dockerfile already ran -- is a bash function that says why it did nothing;
# exported, so the runner's own bash sees it. The runner itself runs unchanged.
_OFFLINE_RUNNER = (
    "pip() { echo \"coop-dag: 'pip $*' skipped: no network in the evaluation container "
    "(COOP_DAG_EVAL_NETWORK=none); the image's installed environment is used\"; }; "
    'pip3() { pip "$@"; }; export -f pip pip3; '
    f'exec bash {IMAGE_RUNNER} "$@"'
)


def _env(env: Mapping[str, str], key: str, default: str) -> str:
    value = (env.get(key) or "").strip()
    return value or default


@dataclass(frozen=True)
class ImageTestSettings:
    """How a task's tests run in its Docker image (the docker evaluation backend).

    One container per feature, created from the task's image (:func:`task_image`), the
    feature's ``tests.patch`` and the merged ``merged.patch`` copied into ``/patches``, then
    ``bash /usr/local/bin/runner.sh tests.patch merged.patch`` -- CooperBench's call. The
    container is bounded in memory and CPUs, removed afterwards, and killed by name when the
    tests outlive their timeout. Without a network (the default), `pip` in the runner does
    nothing and says so (the image has the task's environment installed); with one
    (``COOP_DAG_EVAL_NETWORK=bridge``: CooperBench's setting), the runner installs as it does
    in CooperBench.
    """

    network: str = "none"  # COOP_DAG_EVAL_NETWORK
    memory: str = "4g"  # COOP_DAG_EVAL_MEMORY (docker --memory)
    cpus: str = "2"  # COOP_DAG_EVAL_CPUS (docker --cpus)
    image_template: str | None = None  # COOP_DAG_TASK_IMAGE; None: CooperBench's names
    pull_timeout: float = 600.0  # `docker create` pulls a missing image
    executable: str = "docker"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ImageTestSettings:
        env = os.environ if env is None else env
        return cls(
            network=_env(env, "COOP_DAG_EVAL_NETWORK", cls.network),
            memory=_env(env, "COOP_DAG_EVAL_MEMORY", cls.memory),
            cpus=_env(env, "COOP_DAG_EVAL_CPUS", cls.cpus),
            image_template=_env(env, "COOP_DAG_TASK_IMAGE", "") or None,
        )

    @property
    def offline(self) -> bool:
        return self.network == "none"

    def command(self, patch_args: Sequence[str]) -> list[str]:
        """Arguments of the container's `/bin/bash` (its entrypoint)."""
        if self.offline:
            return ["-c", _OFFLINE_RUNNER, "runner.sh", *patch_args]
        return [IMAGE_RUNNER, *patch_args]

    def create_argv(self, image: str, name: str, patch_args: Sequence[str]) -> list[str]:
        return docker_create_argv(
            image,
            name,
            self.command(patch_args),
            network=self.network,
            run_args=("--rm", "--memory", self.memory, "--cpus", self.cpus),
            executable=self.executable,
        )

    def describe(self, image: str) -> dict[str, Any]:
        """`eval.json`'s `test_env` for tests run in `image`."""
        out = {"backend": "docker", "image": image, "runner": IMAGE_RUNNER}
        out.update({k: v for k, v in asdict(self).items() if k in ("network", "memory", "cpus")})
        if self.offline:
            out["pip"] = "skipped (no network): the image's installed environment"
        return out


class ImageTestError(RuntimeError):
    """Docker could not run the tests (no image, no daemon, a failed copy): no outcome."""


def run_in_image(
    image: str,
    patches: Path,
    patch_args: Sequence[str],
    timeout: float,
    settings: ImageTestSettings,
    *,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
) -> CommandResult:
    """Run the task's runner once in a fresh container of `image`, with `patches`' files at
    ``/patches``; the runner's output (stdout and stderr) and exit code. Raises
    :class:`ImageTestError` when docker fails before the runner starts. The container goes
    whatever happens (``docker rm -f`` by name: also what kills it after `timeout`)."""
    name = f"coop-dag-eval-{uuid.uuid4().hex[:10]}"
    host_env = dict(os.environ)  # the docker CLI needs DOCKER_HOST etc.

    def docker(argv: list[str], what: str, limit: float) -> None:
        p = _run_process(argv, env=host_env, cwd=None, timeout=limit, merge_stderr=False)
        if p.returncode != 0:
            why = "timed out" if p.timed_out else f"exit {p.returncode}"
            detail = (p.stderr.strip() or p.stdout.strip())[-1500:]
            raise ImageTestError(f"{what} failed ({why}): {detail}")

    try:
        # files go in by `docker cp`, not a bind mount: a daemon reached through a mounted
        # socket (the compose run containers) sees its host's paths, not this process's
        docker(settings.create_argv(image, name, patch_args), f"docker create {image}",
               settings.pull_timeout)  # fmt: skip
        docker(docker_cp_argv(f"{patches}/.", name, IMAGE_PATCHES, settings.executable),
               f"copying the patches into {name}", 120.0)  # fmt: skip
        run = _run_process(
            docker_start_argv(name, settings.executable),
            env=host_env,
            cwd=None,
            timeout=timeout,
            merge_stderr=True,
            max_output_bytes=max_output_bytes,
        )
        return _to_result(run, timeout)
    except SandboxError as exc:  # no docker CLI at all
        raise ImageTestError(str(exc)) from None
    finally:
        try:
            _run_process(
                docker_rm_argv(name, settings.executable), env=host_env, cwd=None, timeout=60.0
            )
        except SandboxError as exc:
            log.warning("could not remove container %s: %s", name, exc)
