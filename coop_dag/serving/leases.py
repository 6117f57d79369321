"""Leases on a started server, and stopping it: the state files of the server on a port under a
state directory (``server-<port>.{lock,json,log}``, ``server-<port>.leases/``, one file per
holder pid), taking and returning a lease (:func:`release_server`: the last live holder stops
the server) and stopping it whoever holds leases (:func:`stop_server`). Only a process whose
command line is the recorded one is ever signalled. `serving.server.ensure_server` starts and
reuses servers under these files; `serving.lease_watch` (the watcher a server runs under) reads
the lease directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from coop_dag.util.processes import CHILDREN as _CHILDREN
from coop_dag.util.processes import cmdline as _cmdline
from coop_dag.util.processes import pid_alive as _pid_alive
from coop_dag.util.processes import stop_pid_group as _kill_group

__all__ = [
    "FileLock",
    "drop_lease",
    "lease_dir",
    "live_leases",
    "read_state",
    "release_server",
    "state_files",
    "stop_server",
    "take_lease",
]


class FileLock:
    """An exclusive flock on ``path`` for the length of a ``with`` block."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> FileLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()


def state_files(state_dir: Path, port: int) -> tuple[Path, Path, Path]:
    """The lock, state (pid, argv, identity) and log files of the server on ``port``."""
    stem = f"server-{int(port)}"
    return state_dir / f"{stem}.lock", state_dir / f"{stem}.json", state_dir / f"{stem}.log"


def lease_dir(state_dir: Path, port: int) -> Path:
    """The directory of the leases on the server of ``port`` (one file per holder pid)."""
    return state_dir / f"server-{int(port)}.leases"


def live_leases(state_dir: Path, port: int) -> list[int]:
    """pids holding a lease on the server of ``port`` that are still alive (dead ones'
    lease files are removed)."""
    leases = lease_dir(state_dir, port)
    alive = []
    for f in sorted(leases.glob("*")) if leases.is_dir() else []:
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _pid_alive(pid):
            alive.append(pid)
        else:
            f.unlink(missing_ok=True)
    return alive


def take_lease(state_dir: Path, port: int) -> None:
    """A lease on the server of ``port`` for the calling process."""
    leases = lease_dir(state_dir, port)
    leases.mkdir(parents=True, exist_ok=True)
    (leases / str(os.getpid())).touch()


def drop_lease(state_dir: Path, port: int) -> None:
    """Return the calling process's lease file (the server is not stopped here)."""
    (lease_dir(state_dir, port) / str(os.getpid())).unlink(missing_ok=True)


def read_state(pid_path: Path) -> dict:
    """The recorded state of a started server (empty when there is none or it is unreadable)."""
    try:
        return json.loads(pid_path.read_text())
    except (OSError, ValueError):
        return {}


def release_server(state_dir: str | os.PathLike, port: int) -> bool:
    """Return the calling process's lease on the server of ``port``; stop the server when no
    live process holds one any more. True when it was stopped now."""
    state = Path(state_dir)
    lock_path, pid_path, _ = state_files(state, port)
    if not lock_path.exists():
        return False
    with FileLock(lock_path):
        drop_lease(state, port)
        if live_leases(state, port):
            return False
        return _stop_recorded(pid_path)


def _stop_recorded(pid_path: Path) -> bool:
    """Stop the recorded server's process group (when it is still ours) and forget it."""
    recorded = read_state(pid_path)
    pid = recorded.get("pid")
    argv = recorded.get("argv") or []
    # only the process whose command line is the recorded one is signalled (a reused pid is
    # somebody else's)
    ours = int(pid or 0) in _CHILDREN or (argv and " ".join(argv[1:3]) in _cmdline(pid))
    stopped = False
    if _pid_alive(pid) and ours:
        _kill_group(int(pid))
        stopped = True
    pid_path.unlink(missing_ok=True)
    return stopped


def stop_server(state_dir: str | os.PathLike, port: int, *, lock: bool = True) -> bool:
    """Stop the server :func:`coop_dag.serving.server.ensure_server` started on ``port``
    whoever holds leases (by its state file; only a process whose command line is the recorded
    one is signalled). True when one was stopped. ``lock=False``: without waiting for the
    state lock (at exit, while a thread of this process may hold it waiting for the server to
    start)."""
    state = Path(state_dir)
    lock_path, pid_path, _ = state_files(state, port)
    if not lock:
        return _stop_recorded(pid_path)
    with FileLock(lock_path):
        for f in lease_dir(state, port).glob("*"):
            f.unlink(missing_ok=True)
        return _stop_recorded(pid_path)
