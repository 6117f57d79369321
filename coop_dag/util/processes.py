"""Process groups, the one copy: start a command in a session (and so a process group) of its
own, tell whether a pid lives, list a group's members, and stop a group.

Everything we start that may start children of its own (vLLM and its engine workers, torchrun
and its ranks, a sandboxed command and whatever it spawns, the lease watcher) runs in its own
group, so that stopping the group stops the whole tree. Standard library only: the lease
watcher imports it beside a server of gigabytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# detached children this process started (`spawn_detached`): pid -> Popen, kept so that their
# exit is reaped (no zombie, no ResourceWarning) and `pid_alive` asks the Popen
CHILDREN: dict[int, subprocess.Popen] = {}


def start_group(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` in a new session: the child leads a process group
    whose id is its pid (`stop_group`, `kill_group`, `stop_pid_group`)."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen)


def start_streaming(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """`start_group` with stdin closed and stdout and stderr merged into one text pipe (read
    line by line; undecodable bytes replaced): a server or trainer whose log is streamed."""
    return start_group(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        **popen,
    )


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> int:
    """Start ``argv`` in its own session (setsid), stdout/stderr appended to ``log_path``,
    not waited for. Returns its pid (the id of its group); OSError when it cannot start."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = start_group(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            close_fds=True,
        )
    CHILDREN[proc.pid] = proc
    return proc.pid


def _state(pid: int) -> str:
    """The state letter in ``/proc/<pid>/stat`` (``Z``: a zombie); OSError/IndexError when
    the process is gone or /proc unreadable."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs: exists and is not a zombie (exited, not yet reaped). A child this
    process started (`CHILDREN`) is asked through its Popen, which reaps it."""
    if not pid:
        return False
    child = CHILDREN.get(int(pid))
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return _state(pid) != "Z"
    except (OSError, IndexError):
        return True


def cmdline(pid: int) -> str:
    """``/proc/<pid>/cmdline`` with spaces between the arguments ("" when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def proc_entries() -> Iterator[Path]:
    """``/proc/<pid>`` of every process (none where there is no /proc)."""
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            yield entry


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or
    None where /proc does not say: with the pid, it names one process across pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return fields[19] if len(fields) > 19 else None


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in proc_entries():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> bool:
    """``killpg(pgid, sig)``; False when the group is gone or not ours to signal."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the group ``proc`` leads, SIGKILL after ``grace`` seconds; reaps ``proc``."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the group ``proc`` leads at once (``proc`` alone when the group cannot be
    signalled). The caller waits for it."""
    if not signal_group(proc.pid, signal.SIGKILL):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def stop_pid_group(
    pid: int, grace: float = 20.0, *, alive: Callable[[int], bool] = pid_alive
) -> None:
    """SIGTERM the process group ``pid`` leads, SIGKILL after ``grace``; returns once no member
    is left. Waiting for the leader alone is not enough: a leader (the lease watcher) can die
    at once while a member under it (the server) is still shutting down and holding a port."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not signal_group(pid, sig):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not alive(pid) and not group_members(pid):
                return
            time.sleep(0.1)
