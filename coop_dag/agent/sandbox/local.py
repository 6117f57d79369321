"""`LocalSandbox`: the embedded default, a per-agent checkout confined by bubblewrap."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from coop_dag.agent.sandbox.base import (
    DEFAULT_DIFF_EXCLUDES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT,
    CommandResult,
    Sandbox,
    SandboxError,
    diff_output,
    diff_script,
)
from coop_dag.agent.sandbox.bwrap import BwrapRunner, _prepare_home
from coop_dag.agent.sandbox.process import _to_result
from coop_dag.dataset.base_repo import checkout_base
from coop_dag.dataset.tasks import Task
from coop_dag.util.scratch import owned_tempdir, sweep_stale


class LocalSandbox(Sandbox):
    """A per-agent checkout under `root_dir`, every command confined by bubblewrap.

    Layout: `<root_dir>/<prefix>XXXX/{repo,home}`; `workdir` is the `repo` path (the agent
    sees host paths). Only the agent's own `repo` and `home` are mounted, so agents sharing
    `root_dir` cannot see each other's workspaces, and the task's dataset (gold patches,
    tests), the project checkout, runs/ and $HOME are absent (see `BwrapRunner`). `env` adds
    variables, `extra_path` directories go first on PATH (and are bound read-only),
    `ro_binds` expose host paths read-only, `rw_binds` expose them writable (e.g. a messaging
    unix socket's directory: the sandbox has no network, loopback included).
    """

    def __init__(
        self,
        task: Task,
        root_dir: str | os.PathLike,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allow_unsandboxed: bool = False,
        env: Mapping[str, str] | None = None,
        extra_path: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
        ro_binds: Iterable[str | os.PathLike | tuple] = (),
        rw_binds: Iterable[str | os.PathLike] = (),
        python: str | os.PathLike | None = sys.executable,
        mirror_dir: str | os.PathLike | None = None,
        prefix: str = "agent-",
        keep: bool = False,
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
        bwrap: str = "bwrap",
    ):
        self.task = task
        self.timeout = timeout
        self.keep = keep
        self.root_dir = Path(root_dir).resolve()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(extra_path, (str, os.PathLike)):
            extra_path = [extra_path]
        extra_path = [Path(p).resolve() for p in (extra_path or ())]
        # PATH dirs must be visible inside: bind them read-only (anything under /tmp is not).
        ro_binds = [*ro_binds, *(p for p in extra_path if p.exists())]
        sweep_stale(prefix, self.root_dir)  # workspaces a killed process left here
        self.dir = owned_tempdir(prefix, self.root_dir)
        self._closed = False
        try:
            repo = self.dir / "repo"
            home = self.dir / "home"
            self.base_sha = checkout_base(task, repo, Path(mirror_dir) if mirror_dir else None)
            _prepare_home(home)
            self.workdir = str(repo)
            self._runner = BwrapRunner(
                repo,
                home,
                env=env,
                python=python,
                extra_path=extra_path,
                ro_binds=ro_binds,
                writable=rw_binds,
                # The root holds other agents' workspaces: an empty read-only tmpfs there
                # (the agent's own repo and home show through), so nothing can be written
                # beside them either. The dataset is never mounted; named so it is hidden
                # again should a bind contain it.
                hidden=[self.root_dir] if self.root_dir != Path("/") else [],
                secrets=[task.dir.parent.parent],
                allow_unsandboxed=allow_unsandboxed,
                bwrap=bwrap,
                max_output_bytes=max_output_bytes,
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def sandboxed(self) -> bool:
        return self._runner.sandboxed

    @property
    def env(self) -> dict[str, str]:
        return dict(self._runner.env)

    def argv(self, command: str) -> list[str]:
        """The exact argv `run(command)` executes (for logs and tests)."""
        return self._runner.argv(command)

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        if self._closed:
            raise SandboxError("sandbox is closed")
        t = self.timeout if timeout is None else timeout
        return _to_result(self._runner.run(command, t), t)

    def diff(self, excludes: Sequence[str] = DEFAULT_DIFF_EXCLUDES) -> str:
        if self._closed:
            raise SandboxError("sandbox is closed")
        p = self._runner.run(
            diff_script(self.base_sha, excludes),
            max(self.timeout, 60.0),
            merge_stderr=False,
            max_output_bytes=None,
        )
        return diff_output(p, f"of {self.workdir} against {self.base_sha}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
