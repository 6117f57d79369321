"""Where an agent's bash commands run: one interface, two backends.

- `LocalSandbox` (embedded default): a per-agent checkout of the task's base commit; every
  command runs through bubblewrap on an empty root with only the system directories and the
  interpreter read-only and the agent's own workspace and home writable (nothing else of the
  host: not the project checkout, the dataset, runs/ or $HOME), a private `/tmp`, fresh
  `/dev` and `/proc`, no network, its own PID namespace, and a per-command timeout that
  kills everything the command started.
- `DockerSandbox` (cluster): CooperBench's per-task images (`akhatua/cooperbench-...:task<N>`,
  or those `$COOP_DAG_TASK_IMAGE` names: `task_image`), one long-lived container per agent,
  `docker exec <container> bash -lc <command>` per command in `/workspace/repo`, as
  CooperBench's mini-swe-agent Docker environment does.

Both give CooperBench's command semantics: `bash -lc`, stdout and stderr merged, a fresh
subshell per command (a `cd` or `export` does not carry over), the working directory reset
to the repository every time. `format_observation` renders a result the way CooperBench's
coop config does (JSON-ish, head + tail past 10 000 characters).

The argv builders (`bwrap_argv`, `docker_run_argv`, `docker_exec_argv`, `docker_create_argv`,
`image_for`) are pure functions so the isolation a command gets can be asserted without running
it. `docker_create_argv` / `docker_cp_argv` / `docker_start_argv` also serve evaluation, which
runs a task's `runner.sh` in its image (`coop_dag.eval.evaluate`).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from coop_dag.dataset.base_repo import checkout_base
from coop_dag.dataset.tasks import Task, TaskError
from coop_dag.util.processes import kill_group as _kill_group
from coop_dag.util.processes import start_group
from coop_dag.util.scratch import owned_tempdir, sweep_stale

log = logging.getLogger(__name__)

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
# the /etc entries tools read (users, name service, dynamic linker, alternatives, shell profile,
# TLS roots, time zone). Plus, per sandbox, the interpreter's prefixes (`interpreter_roots`),
# the caller's read-only binds and the workspace. So the project checkout, the dataset (gold
# patches and tests), runs/, $HOME and /run (unix sockets such as docker.sock) are absent.
SYSTEM_PATHS: tuple[str, ...] = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys",
)  # fmt: skip
ETC_PATHS: tuple[str, ...] = tuple(
    f"/etc/{name}"
    for name in (
        "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "hostname", "resolv.conf",
        "gai.conf", "protocols", "services", "networks", "ld.so.cache", "ld.so.conf",
        "ld.so.conf.d", "alternatives", "localtime", "timezone", "profile", "profile.d",
        "bash.bashrc", "inputrc", "environment", "shells", "login.defs", "gitconfig", "ssl",
        "ca-certificates", "mime.types", "magic", "magic.mime", "os-release", "lsb-release",
        "debian_version", "locale.alias", "locale.conf", "terminfo", "mtab", "python3",
        "python3.11", "python3.12", "python3.13",
    )
)  # fmt: skip

# Kept for callers that add their own hidden paths: nothing needs hiding by default, since
# nothing outside the list above is mounted.
DEFAULT_HIDDEN_PATHS: tuple[str, ...] = ()

DOCKER_REGISTRY = "akhatua"
DOCKER_IMAGE_PREFIX = "cooperbench"
DOCKER_WORKDIR = "/workspace/repo"
# CooperBench's image naming (`cooperbench.utils.get_image_name`); `task_image` fields.
COOPERBENCH_TASK_IMAGE = DOCKER_REGISTRY + "/" + DOCKER_IMAGE_PREFIX + "-{name}:task{task}"
TASK_IMAGE_VARIABLE = "COOP_DAG_TASK_IMAGE"  # another template for every task's image

_BASH_PROFILE = """\
# Written by coop_dag's sandbox. A login shell's /etc/profile resets PATH; restore the sandbox's.
if [ -n "${COOP_DAG_SANDBOX_PATH:-}" ]; then export PATH="$COOP_DAG_SANDBOX_PATH"; fi
"""

_GITCONFIG = """\
[user]
\tname = coop-dag agent
\temail = agent@coop-dag.localhost
[safe]
\tdirectory = *
[init]
\tdefaultBranch = main
"""


_UNSET = object()


def _pick(default: int | None, override: int | None | object) -> int | None:
    return default if override is _UNSET else override  # type: ignore[return-value]


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


# --------------------------------------------------------------------------- process runner


class _Capture:
    """Reads a pipe to EOF in a thread, keeping at most `max_bytes` (half head, half tail)."""

    def __init__(self, stream, max_bytes: int | None):
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self._stream = stream
        self._half = None if max_bytes is None else max(max_bytes // 2, 1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self._stream.read1(65536):
                if self._half is None or len(self.head) + len(chunk) <= self._half:
                    self.head += chunk
                    continue
                room = self._half - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                self.tail += chunk
                if len(self.tail) > self._half:
                    cut = len(self.tail) - self._half
                    self.dropped += cut
                    del self.tail[:cut]
        except (OSError, ValueError):
            pass

    def join(self, timeout: float | None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        return (
            self.head.decode("utf-8", errors="replace")
            + f"\n[... {self.dropped} bytes of output dropped ...]\n"
            + self.tail.decode("utf-8", errors="replace")
        )


@dataclass(frozen=True)
class _Proc:
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    duration: float


def _timeout_notice(timeout: float) -> str:
    return f"[coop-dag] command timed out after {timeout:g} seconds; its process group was killed"


def _run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike | None,
    timeout: float | None,
    merge_stderr: bool = True,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
) -> _Proc:
    """Run argv in its own session; on timeout SIGKILL its whole process group.

    Output is read by threads so a command that floods stdout cannot block, and a
    grandchild that escaped the group and keeps the pipe open cannot hang the caller.
    """
    start = time.monotonic()
    try:
        proc = start_group(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start {argv[0]!r}: {exc}") from exc
    out = _Capture(proc.stdout, max_output_bytes)
    err = None if merge_stderr else _Capture(proc.stderr, max_output_bytes)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait()
    except BaseException:  # KeyboardInterrupt etc.: never leave the tree running
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        # The group is gone or exited; remaining writers (if any escaped) get a short grace.
        out.join(5.0 if not timed_out else 2.0)
        if err is not None:
            err.join(2.0)
        for cap in (out, err):
            # A reader still blocked (an escaped grandchild holds the pipe; only possible
            # unsandboxed) keeps its pipe: closing it under the reader would block here.
            if cap is not None and not cap.alive:
                cap.close()
    duration = time.monotonic() - start
    return _Proc(
        stdout=out.text(),
        stderr=err.text() if err is not None else "",
        returncode=-1 if timed_out else proc.returncode,
        timed_out=timed_out,
        duration=duration,
    )


def _to_result(p: _Proc, timeout: float | None) -> CommandResult:
    output = p.stdout
    if p.timed_out and timeout is not None:
        sep = "" if not output or output.endswith("\n") else "\n"
        output = f"{output}{sep}{_timeout_notice(timeout)}\n"
    return CommandResult(output, p.returncode, p.timed_out, p.duration)


# --------------------------------------------------------------------------- bubblewrap


def _depth(path: str) -> int:
    return len(Path(path).parts)


def bwrap_argv(
    workspace: str | os.PathLike,
    command: str,
    *,
    writable: Iterable[str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]] = (),
    ro_binds: Iterable[str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]] = (),
    hidden: Iterable[str | os.PathLike] = DEFAULT_HIDDEN_PATHS,
    system: Iterable[str | os.PathLike] = (),
    symlinks: Iterable[tuple[str, str | os.PathLike]] = (),
    chdir: str | os.PathLike | None = None,
    bwrap: str = "bwrap",
    shell: Sequence[str] = ("bash", "-lc"),
) -> list[str]:
    """The bubblewrap argv that runs `command` confined to `workspace`.

    The sandbox's root is an empty tmpfs: only what is listed here exists inside. `system`
    paths are bound read-only at their own paths and `symlinks` ((target, path) pairs)
    recreated (see `system_mounts`); then fresh /dev and /proc and a private tmpfs /tmp;
    `hidden` paths get an empty read-only tmpfs (e.g. a secret directory inside a bound one);
    `ro_binds` (a path, or a (source, dest) pair) are bound read-only; `workspace` and
    `writable` read-write at their own paths (a (source, dest) pair: at dest). Mounts are
    applied shallowest first, so a deeper one always shows through a shallower one (a venv
    bound inside a hidden checkout stays visible, a checkout hidden inside a bound directory
    stays hidden); at equal depth a hidden tmpfs goes under a bind. Finally the root and the
    hidden tmpfs are remounted read-only, so the only writable places are the workspace,
    `writable` and the private /tmp.
    The command runs in `chdir` (default: the workspace) with no network, its own PID
    namespace and session, and dies if the caller dies.
    """
    ws = os.fspath(workspace)
    hidden = [os.fspath(path) for path in hidden]
    ops: list[tuple[int, int, list[str]]] = []  # (depth, rank, args)
    for target, path in symlinks:
        ops.append((_depth(os.fspath(path)), 0, ["--symlink", target, os.fspath(path)]))
    for path in system:
        ops.append((_depth(os.fspath(path)), 0, ["--ro-bind", os.fspath(path), os.fspath(path)]))
    ops += [(2, 0, ["--dev", "/dev"]), (2, 0, ["--proc", "/proc"]), (2, 0, ["--tmpfs", "/tmp"])]
    ops += [(_depth(path), 1, ["--tmpfs", path]) for path in hidden]
    for bind in ro_binds:
        src, dst = bind if isinstance(bind, tuple) else (bind, bind)
        ops.append((_depth(os.fspath(dst)), 2, ["--ro-bind", os.fspath(src), os.fspath(dst)]))
    for bind in (ws, *writable):
        src, dst = bind if isinstance(bind, tuple) else (bind, bind)
        ops.append((_depth(os.fspath(dst)), 3, ["--bind", os.fspath(src), os.fspath(dst)]))
    argv = [bwrap]
    for _, _, args in sorted(ops, key=lambda op: op[:2]):  # stable: same depth keeps order
        argv += args
    for path in hidden:  # the empty tmpfs stays read-only (binds inside it stay writable)
        argv += ["--remount-ro", path]
    argv += [
        "--remount-ro", "/",
        "--unshare-net",
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "--chdir", os.fspath(chdir) if chdir is not None else ws,
        "--",
        *shell,
        command,
    ]  # fmt: skip
    return argv


def system_mounts(
    paths: Iterable[str] = (*SYSTEM_PATHS, *ETC_PATHS),
) -> tuple[list[str], list[tuple[str, str]]]:
    """`(binds, symlinks)` for `bwrap_argv`: the `paths` that exist on this host, symlinks
    recreated as symlinks (so merged-/usr `/bin -> usr/bin` and `/etc/alternatives` entries
    resolve inside the sandbox exactly as outside)."""
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for path in paths:
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.exists(path):
            binds.append(path)
    return binds, links


@lru_cache(maxsize=16)
def interpreter_roots(python: str) -> tuple[Path, ...]:
    """The directories a sandbox must show for `python` to run with its packages: its venv
    and its base installation (`sys.prefix`, `sys.base_prefix`, ...), and the directories
    holding the executable and the file it links to. Nothing around them: a venv inside the
    project checkout shows, the checkout does not; a base interpreter under $HOME (pyenv, uv)
    shows, the rest of $HOME does not. System directories are left out (always mounted)."""
    exe = Path(os.path.abspath(python))
    if exe == Path(os.path.abspath(sys.executable)):
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        code = "import sys; print(sys.prefix, sys.base_prefix, sys.exec_prefix, "
        code += "sys.base_exec_prefix, sep=chr(10))"
        try:
            out = subprocess.run(
                [str(exe), "-c", code], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            prefixes = [line for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot ask %s for its prefixes (%s); guessing from its path", exe, exc)
            prefixes = [str(exe.parent.parent), str(Path(os.path.realpath(exe)).parent.parent)]
    candidates = [Path(p) for p in prefixes]
    candidates += [exe.parent, Path(os.path.realpath(exe)).parent]
    system = [Path(p) for p in SYSTEM_PATHS]
    roots: list[Path] = []
    for cand in candidates:
        for path in {cand, Path(os.path.realpath(cand))}:  # a symlinked prefix shows both ways
            if not path.is_dir() or path == Path("/"):
                continue
            if any(path == s or s in path.parents for s in system):
                continue
            roots.append(path)
    # Keep the outermost of nested roots (a venv's bin dir lies inside the venv).
    roots = sorted(set(roots), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for root in roots:
        if not any(k == root or k in root.parents for k in kept):
            kept.append(root)
    return tuple(kept)


def host_secrets(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Host directories an agent must never read, hidden again (empty tmpfs) should a bound
    directory contain them: the project checkout and installed package (the bundled dataset
    with its gold patches and tests), the runs directory, $HOME, and `extra` (e.g. the task's
    dataset). A site-packages directory is never one (the package may be installed there)."""
    from coop_dag import BUNDLED_DATASET, PACKAGE_DIR, REPO_ROOT

    found = [PACKAGE_DIR, BUNDLED_DATASET, Path.home(), *(Path(e) for e in extra)]
    if (REPO_ROOT / "pyproject.toml").exists() or (REPO_ROOT / ".git").exists():
        found.append(REPO_ROOT)  # a checkout (editable install), not site-packages
    runs = os.environ.get("COOP_DAG_RUNS_DIR", "").strip()
    if runs:
        found.append(Path(runs))
    out: dict[Path, None] = {}
    for path in found:  # both spellings: a bind of either would show it
        out.setdefault(Path(os.path.abspath(path)), None)
        out.setdefault(Path(os.path.realpath(path)), None)
    return list(out)


def secrets_to_hide(
    secrets: Iterable[str | os.PathLike],
    exposed: Iterable[str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]],
) -> list[Path]:
    """Where each of `secrets` would show inside the sandbox because an `exposed` bind (a
    path, or a (source, dest) pair) contains it: the paths to hide. A secret that *is* an
    exposed directory is left alone (hiding it would hide what the caller asked to show)."""
    binds = []
    for bind in exposed:
        src, dst = bind if isinstance(bind, tuple) else (bind, bind)
        binds.append((Path(os.path.abspath(src)), Path(os.path.abspath(dst))))
    out: dict[Path, None] = {}
    for secret in (Path(os.path.abspath(s)) for s in secrets):
        for src, dst in binds:
            if src in secret.parents:
                out.setdefault(dst / secret.relative_to(src), None)
            elif src == secret:
                log.warning("sandbox shows %s although it is a protected directory", secret)
    return list(out)


@lru_cache(maxsize=1)
def _host_system() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    binds, links = system_mounts()
    return tuple(binds), tuple(links)


@lru_cache(maxsize=4)
def bwrap_status(bwrap: str = "bwrap") -> tuple[bool, str]:
    """(usable, reason): bwrap is on PATH and can create the namespaces we ask for."""
    exe = shutil.which(bwrap)
    if exe is None:
        return False, f"{bwrap!r} not found on PATH (install bubblewrap)"
    probe = [
        exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--", "true",
    ]  # fmt: skip
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bubblewrap probe failed: {exc}"
    if proc.returncode != 0:
        return False, f"bubblewrap cannot create a sandbox here: {proc.stderr.strip()}"
    return True, exe


def sandbox_env(
    home: str | os.PathLike,
    *,
    path: str,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment a sandboxed command gets: nothing inherited from the host
    (no API keys), CooperBench's pager settings, HOME, locale, and `env` on top.

    `path` is exported twice: as PATH and as COOP_DAG_SANDBOX_PATH, which the sandbox home's
    `.bash_profile` restores after /etc/profile resets PATH in the login shell.
    """
    full = {
        "HOME": os.fspath(home),
        "USER": os.environ.get("USER", "root"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": "/bin/bash",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # `git status` and friends otherwise take index.lock and rewrite the index to refresh
        # its stat cache: a look at the repository must not write to it.
        "GIT_OPTIONAL_LOCKS": "0",
        **DEFAULT_ENV,
        **(env or {}),
    }
    full["PATH"] = path
    full["COOP_DAG_SANDBOX_PATH"] = path
    return full


def sandbox_path(
    python: str | os.PathLike | None = None, extra_path: Iterable[str | os.PathLike] = ()
) -> str:
    """PATH inside the sandbox: `extra_path` dirs, then the interpreter's bin dir (so `python`
    and `pytest` are the ones with the task's test dependencies), then the host PATH."""
    parts = [os.fspath(p) for p in extra_path]
    if python:
        parts.append(os.path.dirname(os.path.abspath(os.fspath(python))))
    parts += os.environ.get("PATH", os.defpath).split(os.pathsep)
    seen: dict[str, None] = {}
    for part in parts:
        if part:
            seen.setdefault(part, None)
    return os.pathsep.join(seen)


def hideable(root: Path, python: str | os.PathLike | None = sys.executable) -> list[Path]:
    """`[root]` if it can be hidden inside sandboxes (an empty read-only tmpfs over it), `[]`
    when it is `/` or contains the interpreter or system directories."""
    root = Path(root)
    if root == Path("/"):
        return []
    protected = [Path(sys.prefix).resolve(), Path("/usr"), Path("/bin")]
    if python:
        protected += [Path(os.path.abspath(python)), Path(os.path.realpath(python))]
    if any(p == root or root in p.parents for p in protected):
        log.warning("not hiding %s inside sandboxes: it contains the interpreter", root)
        return []
    return [root]


def _prepare_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".bash_profile").write_text(_BASH_PROFILE)
    (home / ".gitconfig").write_text(_GITCONFIG)


class BwrapRunner:
    """Runs commands confined to one workspace; shared by `LocalSandbox` and evaluation.

    Inside, the command sees the system (`SYSTEM_PATHS`, `ETC_PATHS`), `python`'s venv and base
    installation (`interpreter_roots`), `extra_path` and `ro_binds` read-only, the workspace
    and home (and `writable`) read-write, and nothing else of the host. `secrets` (with
    `host_secrets`' defaults) found inside a bound directory are hidden again.
    """

    def __init__(
        self,
        workspace: str | os.PathLike,
        home: str | os.PathLike,
        *,
        env: Mapping[str, str] | None = None,
        python: str | os.PathLike | None = sys.executable,
        extra_path: Iterable[str | os.PathLike] = (),
        ro_binds: Iterable[str | os.PathLike | tuple] = (),
        writable: Iterable[str | os.PathLike | tuple] = (),
        hidden: Iterable[str | os.PathLike] = DEFAULT_HIDDEN_PATHS,
        secrets: Iterable[str | os.PathLike] = (),
        allow_unsandboxed: bool = False,
        bwrap: str = "bwrap",
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
    ):
        self.workspace = Path(workspace)
        self.home = Path(home)
        self.system, self.symlinks = _host_system()
        self.ro_binds = list(ro_binds)
        if python:  # its venv and base installation, wherever they live (not what is around)
            self.ro_binds += interpreter_roots(os.path.abspath(os.fspath(python)))
        # a (source, dest) pair binds source at dest (a real task's checkout at /workspace/repo)
        self.writable = [w if isinstance(w, tuple) else Path(w) for w in writable]
        # Nothing of the host is mounted beyond the system, the binds and the workspace; a
        # secret (checkout, dataset, runs, $HOME) inside one of those binds is hidden again.
        leaks = secrets_to_hide(host_secrets(secrets), [*self.system, *self.ro_binds])
        self.hidden = [Path(h) for h in hidden if Path(h).exists() or Path(h).is_symlink()]
        self.hidden += [h for h in leaks if h not in self.hidden]
        self.max_output_bytes = max_output_bytes
        self.env = sandbox_env(self.home, path=sandbox_path(python, extra_path), env=env)
        ok, info = bwrap_status(bwrap)
        if ok:
            self.bwrap: str | None = info
        elif allow_unsandboxed:
            self.bwrap = None
            warnings.warn(
                f"running agent commands WITHOUT a sandbox: {info}", RuntimeWarning, stacklevel=3
            )
            log.warning("running agent commands without a sandbox: %s", info)
        else:
            raise SandboxError(
                f"{info}. Commands must run in bubblewrap; pass allow_unsandboxed=True to run "
                "them as plain bash on this machine (no isolation)."
            )

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def argv(self, command: str, chdir: str | os.PathLike | None = None) -> list[str]:
        if self.bwrap is None:
            return ["bash", "-lc", command]
        return bwrap_argv(
            self.workspace,
            command,
            writable=[self.home, *self.writable],
            ro_binds=self.ro_binds,
            hidden=self.hidden,
            system=self.system,
            symlinks=self.symlinks,
            chdir=chdir,
            bwrap=self.bwrap,
        )

    def run(
        self,
        command: str,
        timeout: float | None,
        *,
        chdir: str | os.PathLike | None = None,
        merge_stderr: bool = True,
        max_output_bytes: int | None | object = _UNSET,
    ) -> _Proc:
        cwd = os.fspath(chdir if chdir is not None else self.workspace)
        return _run_process(
            self.argv(command, chdir=chdir),
            env=self.env,
            cwd=cwd,
            timeout=timeout,
            merge_stderr=merge_stderr,
            max_output_bytes=_pick(self.max_output_bytes, max_output_bytes),
        )


# --------------------------------------------------------------------------- the interface


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
        if p.returncode != 0:
            raise SandboxError(
                f"cannot compute the diff of {self.workdir} against {self.base_sha}: "
                f"{'timed out' if p.timed_out else p.stderr.strip()}"
            )
        return p.stdout

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- docker


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
        if p.returncode != 0:
            raise SandboxError(
                f"cannot compute the diff in {self.container_name}: "
                f"{'timed out' if p.timed_out else p.stderr.strip()}"
            )
        return p.stdout

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
