"""The sandbox interface: one agent's place to run commands, and what a command returns.

Two backends implement `Sandbox`:

- `LocalSandbox` (`local.py`, embedded default): a per-agent checkout of the task's base
  commit; every command runs through bubblewrap on an empty root with only the system
  directories and the interpreter read-only and the agent's own workspace and home writable
  (nothing else of the host: not the project checkout, the dataset, runs/ or $HOME), a private
  `/tmp`, fresh `/dev` and `/proc`, no network, its own PID namespace, and a per-command
  timeout that kills everything the command started (`bwrap.py`, `process.py`).
- `DockerSandbox` (`docker.py`, cluster): CooperBench's per-task images
  (`akhatua/cooperbench-...:task<N>`, or those `$COOP_DAG_TASK_IMAGE` names: `task_image`),
  one long-lived container per agent, `docker exec <container> bash -lc <command>` per command
  in `/workspace/repo`, as CooperBench's mini-swe-agent Docker environment does.

Both give CooperBench's command semantics: `bash -lc`, stdout and stderr merged, a fresh
subshell per command (a `cd` or `export` does not carry over), the working directory reset
to the repository every time. `format_observation` renders a result the way CooperBench's
coop config does (JSON-ish, head + tail past 10 000 characters).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coop_dag.agent.sandbox.process import _Proc

DEFAULT_TIMEOUT = 180.0
"""Seconds a single agent command may run before its process tree is killed."""

DEFAULT_OBSERVATION_LIMIT = 10_000
"""CooperBench's coop config switches to head + tail at this many characters."""

DEFAULT_MAX_OUTPUT_BYTES = 2_000_000
"""Raw output kept per command (first half + last half); protects memory from `yes`."""

# CooperBench's coop config sets these in the agent's environment.
DEFAULT_ENV: dict[str, str] = {
    "PAGER": "cat",
    "MANPAGER": "cat",
    "LESS": "-R",
    "PIP_PROGRESS_BAR": "off",
    "TQDM_DISABLE": "1",
}

# Paths never included in a submitted patch: CooperBench's prompt tells agents to write their
# patch to `patch.txt` at the repo root (both agents doing so would make every pair conflict),
# and bytecode / pytest caches are artefacts of running the tests, not changes.
DEFAULT_DIFF_EXCLUDES: tuple[str, ...] = (
    ":(exclude,top)patch.txt",
    ":(exclude,glob)**/__pycache__/**",
    ":(exclude,glob)**/*.pyc",
    ":(exclude,glob)**/.pytest_cache/**",
)

# A local sandbox mounts nothing of the host but these, read-only: the system's programs and
# libraries (a merged-/usr symlink such as /bin -> usr/bin is recreated as a symlink), /sys, and


class SandboxError(RuntimeError):
    """The sandbox cannot be created or used (missing bwrap, broken workspace, docker failure)."""


@dataclass(frozen=True)
class CommandResult:
    output: str  # stdout and stderr, merged in arrival order
    returncode: int  # -1 when the command was killed at its timeout (CooperBench's convention)
    timed_out: bool
    duration: float  # wall-clock seconds

    def observation(self, limit: int = DEFAULT_OBSERVATION_LIMIT) -> str:
        return format_observation(self.output, self.returncode, limit)


# --------------------------------------------------------------------------- observations


def _tojson(value: object) -> str:
    """Jinja2's `tojson` filter, byte for byte (sorted keys, HTML-safe escapes)."""
    return (
        json.dumps(value, sort_keys=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


def format_observation(
    output: str,
    returncode: int,
    limit: int = DEFAULT_OBSERVATION_LIMIT,
    exception_info: str | None = None,
) -> str:
    """Render a command result as the agent sees it, as CooperBench's coop config does.

    Under `limit` characters the whole output is shown; otherwise the first and last
    `limit // 2` characters with the number of elided characters and a warning in between.
    The text equals what the coop config's Jinja `observation_template` renders.
    """
    extra = f', "exception_info": {_tojson(exception_info)}' if exception_info else ""
    if len(output) < limit:
        return f'{{\n  "returncode": {returncode},\n  "output": {_tojson(output)}{extra}\n}}'
    half = limit // 2
    return (
        f'{{\n  "returncode": {returncode},\n'
        f'  "output_head": {_tojson(output[:half])},\n'
        f'  "output_tail": {_tojson(output[-half:] if half else "")},\n'
        f'  "elided_chars": {len(output) - limit},\n'
        f'  "warning": "Output too long."{extra}\n}}'
    )


def diff_script(base_sha: str, excludes: Sequence[str] = DEFAULT_DIFF_EXCLUDES) -> str:
    """Shell that prints the work tree's full diff against `base_sha` on stdout.

    Committed, staged, unstaged and untracked (not ignored) changes all count. The agent's
    own index is left alone: its copy goes into a temporary index file, `git add -A` there.
    """
    specs = " ".join(shlex.quote(s) for s in (".", *excludes))
    return (
        "set -eu\n"
        'idx="$(mktemp "${TMPDIR:-/tmp}/coop-dag-index.XXXXXX")"\n'
        "trap 'rm -f \"$idx\"' EXIT\n"
        'gitdir="$(git rev-parse --git-dir)"\n'
        'if [ -f "$gitdir/index" ]; then cp "$gitdir/index" "$idx"; else rm -f "$idx"; fi\n'
        'export GIT_INDEX_FILE="$idx"\n'
        f"git -c core.fsmonitor=false add -A -- {specs}\n"
        "git -c core.quotepath=off -c core.fsmonitor=false diff --cached --binary --no-color "
        f"--no-ext-diff --no-textconv {shlex.quote(base_sha)} -- {specs}\n"
    )


class Sandbox:
    """One agent's place to run commands. Subclasses: `LocalSandbox`, `DockerSandbox`."""

    workdir: str  # the repository path as the agent sees it
    base_sha: str
    timeout: float

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        raise NotImplementedError

    def observe(
        self, command: str, timeout: float | None = None, limit: int = DEFAULT_OBSERVATION_LIMIT
    ) -> tuple[CommandResult, str]:
        """Run and render: the result and the observation text the agent is shown."""
        result = self.run(command, timeout)
        return result, result.observation(limit)

    def diff(self) -> str:
        """The agent's submitted patch: everything it changed relative to the base commit."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def diff_output(p: _Proc, where: str) -> str:
    """The patch `diff_script` printed, or `SandboxError` naming `where` (the workspace or
    container) with git's error or the timeout."""
    if p.returncode != 0:
        raise SandboxError(
            f"cannot compute the diff {where}: {'timed out' if p.timed_out else p.stderr.strip()}"
        )
    return p.stdout
