"""`DockerSandbox`: the cluster backend, and the `docker` argv builders.

CooperBench's per-task images (`akhatua/cooperbench-...:task<N>`, or those
`$COOP_DAG_TASK_IMAGE` names: `task_image`), one long-lived container per agent,
`docker exec <container> bash -lc <command>` per command in `/workspace/repo`, as
CooperBench's mini-swe-agent Docker environment does. The argv builders (`docker_run_argv`,
`docker_exec_argv`, `docker_create_argv`, `image_for`) are pure functions;
`docker_create_argv` / `docker_cp_argv` / `docker_start_argv` also serve evaluation, which
runs a task's `runner.sh` in its image (`coop_dag.eval.evaluate`).
"""

from __future__ import annotations

import logging
import os
import shlex
import uuid
from collections.abc import Iterable, Mapping, Sequence

from coop_dag.agent.sandbox.base import (
    DEFAULT_DIFF_EXCLUDES,
    DEFAULT_ENV,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT,
    CommandResult,
    Sandbox,
    SandboxError,
    diff_output,
    diff_script,
)
from coop_dag.agent.sandbox.process import _UNSET, _pick, _Proc, _run_process, _to_result
from coop_dag.dataset.tasks import Task, TaskError

log = logging.getLogger(__name__)

DOCKER_REGISTRY = "akhatua"
DOCKER_IMAGE_PREFIX = "cooperbench"
DOCKER_WORKDIR = "/workspace/repo"
# CooperBench's image naming (`cooperbench.utils.get_image_name`); `task_image` fields.
COOPERBENCH_TASK_IMAGE = DOCKER_REGISTRY + "/" + DOCKER_IMAGE_PREFIX + "-{name}:task{task}"
TASK_IMAGE_VARIABLE = "COOP_DAG_TASK_IMAGE"  # another template for every task's image


def _image_fields(repo: str, task_id: int) -> dict[str, object]:
    # {name}: CooperBench's spelling of the repository, without `_task` and with `_` → `-`
    return {"repo": repo, "name": repo.replace("_task", "").replace("_", "-"), "task": task_id}


def image_for(task: Task | str, task_id: int | None = None) -> str:
    """CooperBench's Docker Hub image for a task: `akhatua/cooperbench-<repo>:task<N>`, the
    repo name without `_task` and with `_` → `-` (e.g. pallets_click_task/2068 →
    `akhatua/cooperbench-pallets-click:task2068`)."""
    if isinstance(task, Task):
        repo, tid = task.repo, task.task_id
    else:
        if task_id is None:
            raise TaskError("image_for(repo_name, task_id): task_id is required")
        repo, tid = task, task_id
    return COOPERBENCH_TASK_IMAGE.format(**_image_fields(repo, tid))


def task_image(
    task: Task, template: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The Docker image of `task`, for the agents' containers and for running its tests.

    `template` (default: ``$COOP_DAG_TASK_IMAGE``; unset or empty: CooperBench's naming,
    :func:`image_for`) is a format string with ``{repo}`` (the dataset's repository
    directory, e.g. ``pallets_click_task``), ``{name}`` (CooperBench's spelling of it,
    ``pallets-click``) and ``{task}`` (the task id): ``myregistry/{repo}:task{task}``.
    """
    env = os.environ if env is None else env
    template = template or (env.get(TASK_IMAGE_VARIABLE) or "").strip() or None
    if template is None:
        return image_for(task)
    try:
        image = template.format(**_image_fields(task.repo, task.task_id))
    except (KeyError, IndexError, ValueError) as exc:
        raise TaskError(
            f"{TASK_IMAGE_VARIABLE}={template!r} is not an image template ({exc!r}); its "
            "fields are {repo}, {name} and {task}, e.g. myregistry/{repo}:task{task}"
        ) from None
    if not image or any(c.isspace() for c in image):
        raise TaskError(f"{TASK_IMAGE_VARIABLE}={template!r} gives no image name: {image!r}")
    return image


def _container_options(
    container_name: str,
    *,
    workdir: str,
    entrypoint: str,
    network: str | None,
    volumes: Iterable[tuple[str, str, str]],
) -> list[str]:
    argv = ["--name", container_name, "-w", workdir, "--entrypoint", entrypoint]
    if network:
        argv += ["--network", network]
    for host, container, mode in volumes:
        argv += ["-v", f"{host}:{container}:{mode}"]
    return argv


def docker_run_argv(
    image: str,
    container_name: str,
    *,
    workdir: str = DOCKER_WORKDIR,
    network: str | None = None,
    volumes: Iterable[tuple[str, str, str]] = (),
    run_args: Sequence[str] = ("--rm",),
    container_timeout: str = "2h",
    executable: str = "docker",
) -> list[str]:
    """Start a detached container that just sleeps. The entrypoint is overridden because
    CooperBench's images use runner.sh as theirs. `volumes` are (host, container, mode)."""
    options = _container_options(
        container_name, workdir=workdir, entrypoint="/bin/bash", network=network, volumes=volumes
    )
    return [
        executable, "run", "-d", *options, *run_args, image, "-c", f"sleep {container_timeout}",
    ]  # fmt: skip


def docker_create_argv(
    image: str,
    container_name: str,
    command: Sequence[str],
    *,
    workdir: str = DOCKER_WORKDIR,
    entrypoint: str = "/bin/bash",
    network: str | None = None,
    volumes: Iterable[tuple[str, str, str]] = (),
    run_args: Sequence[str] = ("--rm",),
    executable: str = "docker",
) -> list[str]:
    """Create (not start) a container that runs `entrypoint` with `command` as its arguments;
    files go in with :func:`docker_cp_argv`, :func:`docker_start_argv` runs it attached. A
    missing image is pulled here, as `docker run` would."""
    options = _container_options(
        container_name, workdir=workdir, entrypoint=entrypoint, network=network, volumes=volumes
    )
    return [executable, "create", *options, *run_args, image, *command]


def docker_cp_argv(
    source: str | os.PathLike, container: str, dest: str, executable: str = "docker"
) -> list[str]:
    """Copy host `source` to `dest` in `container` (created or running). A source ending in
    ``/.`` copies a directory's contents, creating `dest` when the image lacks it."""
    return [executable, "cp", os.fspath(source), f"{container}:{dest}"]


def docker_start_argv(container: str, executable: str = "docker") -> list[str]:
    """Start a created container attached: its output on ours, its exit code ours."""
    return [executable, "start", "-a", container]


def docker_exec_argv(
    container: str,
    command: str,
    *,
    workdir: str = DOCKER_WORKDIR,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    extra_path: Sequence[str] = (),
    executable: str = "docker",
) -> list[str]:
    """`docker exec -w <workdir> -e K=V... <container> bash -lc <command>`.

    With `timeout`, the shell runs under coreutils `timeout -s KILL`, which signals its own
    process group, so the command's whole tree dies inside the container (killing the
    `docker exec` client alone would leave it running). `extra_path` dirs (paths inside
    the container) are prepended to PATH after the login shell has set it.
    """
    argv = [executable, "exec", "-w", workdir]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    argv.append(container)
    if timeout is not None:
        argv += ["timeout", "-s", "KILL", f"{timeout:g}"]
    if extra_path:
        prefix = ":".join(extra_path)
        command = f'export PATH={shlex.quote(prefix)}:"$PATH"\n{command}'
    argv += ["bash", "-lc", command]
    return argv


def docker_rm_argv(container: str, executable: str = "docker") -> list[str]:
    return [executable, "rm", "-f", container]


class DockerSandbox(Sandbox):
    """An agent's container from CooperBench's task image; commands via `docker exec`."""

    KILL_GRACE = 30.0  # host-side backstop past the in-container timeout

    def __init__(
        self,
        task: Task,
        image: str | None = None,
        container_name: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        extra_path: Sequence[str] = (),
        network: str | None = None,
        volumes: Iterable[tuple[str, str, str]] = (),
        run_args: Sequence[str] = ("--rm",),
        container_timeout: str = "2h",
        pull_timeout: float = 600.0,
        workdir: str = DOCKER_WORKDIR,
        executable: str = "docker",
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
        start: bool = True,
    ):
        self.task = task
        self.image = image or task_image(task)
        self.container_name = container_name or f"coop-dag-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.env = {**DEFAULT_ENV, **(env or {})}
        self.extra_path = list(extra_path)
        self.network = network
        self.volumes = list(volumes)
        self.run_args = list(run_args)
        self.container_timeout = container_timeout
        self.pull_timeout = pull_timeout
        self.workdir = workdir
        self.executable = executable
        self.max_output_bytes = max_output_bytes
        self.container_id: str | None = None
        self.base_sha = ""
        if start:
            self.start()

    def _host_env(self) -> dict[str, str]:
        return dict(os.environ)  # the docker CLI needs DOCKER_HOST etc.; the container does not

    def start(self) -> None:
        argv = docker_run_argv(
            self.image,
            self.container_name,
            workdir=self.workdir,
            network=self.network,
            volumes=self.volumes,
            run_args=self.run_args,
            container_timeout=self.container_timeout,
            executable=self.executable,
        )
        p = _run_process(
            argv, env=self._host_env(), cwd=None, timeout=self.pull_timeout, merge_stderr=False
        )
        if p.returncode != 0:
            raise SandboxError(
                f"docker run {self.image} failed ({'timed out' if p.timed_out else p.returncode})"
                f": {p.stderr.strip()}"
            )
        lines = p.stdout.strip().splitlines()
        self.container_id = lines[-1] if lines else self.container_name
        try:
            sha = self._exec("git rev-parse HEAD", 60.0, merge_stderr=False)
            if sha.returncode != 0 or not sha.stdout.strip():
                raise SandboxError(
                    f"no git repository at {self.workdir} in {self.image}: {sha.stderr.strip()}"
                )
            self.base_sha = sha.stdout.strip()
        except BaseException:
            self.close()
            raise

    def _exec(
        self,
        command: str,
        timeout: float,
        *,
        merge_stderr: bool = True,
        max_output_bytes: int | None | object = _UNSET,
    ) -> _Proc:
        if self.container_id is None:
            raise SandboxError("container is not running")
        argv = docker_exec_argv(
            self.container_id,
            command,
            workdir=self.workdir,
            env=self.env,
            timeout=timeout,
            extra_path=self.extra_path,
            executable=self.executable,
        )
        p = _run_process(
            argv,
            env=self._host_env(),
            cwd=None,
            timeout=timeout + self.KILL_GRACE,
            merge_stderr=merge_stderr,
            max_output_bytes=_pick(self.max_output_bytes, max_output_bytes),
        )
        # `timeout -s KILL` exits 137 once the deadline passes.
        if not p.timed_out and p.returncode == 137 and p.duration >= timeout * 0.98:
            p = _Proc(p.stdout, p.stderr, -1, True, p.duration)
        return p

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        t = self.timeout if timeout is None else timeout
        return _to_result(self._exec(command, t), t)

    def diff(self, excludes: Sequence[str] = DEFAULT_DIFF_EXCLUDES) -> str:
        p = self._exec(
            diff_script(self.base_sha, excludes),
            max(self.timeout, 60.0),
            merge_stderr=False,
            max_output_bytes=None,
        )
        return diff_output(p, f"in {self.container_name}")

    def close(self) -> None:
        if self.container_id is None:
            return
        self.container_id = None
        try:
            _run_process(
                docker_rm_argv(self.container_name, self.executable),
                env=self._host_env(),
                cwd=None,
                timeout=60.0,
            )
        except SandboxError as exc:
            log.warning("could not remove container %s: %s", self.container_name, exc)
