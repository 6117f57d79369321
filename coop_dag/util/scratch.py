"""Temporary directories a killed run leaves behind are removed by the next run.

A run cleans its temporary directories in `finally` blocks, which a SIGKILL (OOM killer, a
cancelled Dagster run, a power cut) never reaches. So each one is created by
:func:`owned_tempdir`, which records its owner -- pid and process start time, so a recycled
pid is not mistaken for it -- in a file inside, and the next run calls :func:`sweep_stale`
first: every ``<prefix>*`` directory whose owner is dead is removed, after killing processes
still working in it (an embedded Redis server outlives the process that started it).
Directories without an owner file, or owned by a live process or another host, are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from coop_dag.util.processes import proc_entries, start_time

log = logging.getLogger(__name__)

OWNER_FILE = ".coop-dag-owner"


def _owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid), "host": socket.gethostname()}


def owned_tempdir(prefix: str, dir: str | os.PathLike | None = None) -> Path:
    """`tempfile.mkdtemp(prefix=prefix, dir=dir)` with this process recorded as its owner."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    (path / OWNER_FILE).write_text(json.dumps(_owner()))
    return path


def owner_alive(owner: dict) -> bool:
    """Whether the process recorded in `owner` still runs (unsure counts as alive)."""
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # a shared directory: another machine's run, not ours to judge
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    started = owner.get("start")
    return started is None or start_time(pid) in (None, started)


def _kill_processes_in(path: Path) -> list[int]:
    """SIGKILL this user's processes whose working directory is `path` or below."""
    killed = []
    me = os.getpid()
    for entry in proc_entries():
        if int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == path or path in cwd.parents:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    return killed


def sweep_stale(
    prefix: str, dir: str | os.PathLike | None = None, *, kill_orphans: bool = False
) -> list[Path]:
    """Remove the `<prefix>*` directories in `dir` (default: the system temp dir) whose owner
    is dead; with `kill_orphans`, first SIGKILL processes still running inside them. Returns
    the directories removed."""
    root = Path(dir) if dir is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(root.glob(f"{prefix}*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or its owner is still writing the file
        if not isinstance(owner, dict) or owner_alive(owner):
            continue
        if kill_orphans:
            pids = _kill_processes_in(Path(os.path.realpath(path)))
            if pids:
                log.warning("killed orphaned processes %s of a dead run in %s", pids, path)
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by dead process %s", path, owner.get("pid"))
        removed.append(path)
    return removed
