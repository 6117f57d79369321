"""Bubblewrap confinement: what a local command sees, and the runner that applies it.

Every command runs on an empty root with only the system directories and the interpreter
read-only and the agent's own workspace and home writable (nothing else of the host: not the
project checkout, the dataset, runs/ or $HOME), a private `/tmp`, fresh `/dev` and `/proc`, no
network and its own PID namespace. `bwrap_argv` is a pure function, so the isolation a command
gets can be asserted without running it. `BwrapRunner` is shared by `LocalSandbox` and
evaluation (`coop_dag.eval.evaluate`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from coop_dag.agent.sandbox.base import DEFAULT_ENV, DEFAULT_MAX_OUTPUT_BYTES, SandboxError
from coop_dag.agent.sandbox.process import _UNSET, _pick, _Proc, _run_process

log = logging.getLogger(__name__)

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
