"""coop_dag.util.processes: the one copy of starting and stopping process groups, on real
processes (a shell that starts a grandchild in its group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from coop_dag.util import processes as P

# a leader that starts a grandchild in its own group and waits; both ignore nothing
TREE = ["bash", "-c", "sleep 300 & wait"]


def _wait_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not P.group_members(pgid):
            return True
        time.sleep(0.05)
    return False


def _members(pgid: int, n: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = P.group_members(pgid)
        if len(members) >= n:
            return members
        time.sleep(0.05)
    return P.group_members(pgid)


def test_start_group_leads_its_own_group_and_stop_group_stops_the_tree():
    proc = P.start_group(TREE, stdin=subprocess.DEVNULL)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgrp()
        members = _members(proc.pid, 2)
        assert proc.pid in members and len(members) == 2  # the shell and its sleep
        assert P.pid_alive(proc.pid) and "sleep 300" in P.cmdline(proc.pid)
    finally:
        P.stop_group(proc, grace=5)
    assert proc.returncode is not None
    assert _wait_gone(proc.pid)


def test_stop_group_kills_what_ignores_sigterm_after_the_grace():
    proc = P.start_group(["bash", "-c", "trap '' TERM; sleep 300 & wait"])
    _members(proc.pid, 2)
    started = time.monotonic()
    P.stop_group(proc, grace=0.5)
    assert time.monotonic() - started < 10
    assert proc.returncode == -signal.SIGKILL
    assert _wait_gone(proc.pid)


def test_kill_group_kills_at_once():
    proc = P.start_group(TREE)
    _members(proc.pid, 2)
    P.kill_group(proc)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert _wait_gone(proc.pid)
    P.kill_group(proc)  # a group already gone: no error


def test_spawn_detached_stop_pid_group_waits_for_every_member(tmp_path):
    log = tmp_path / "sub" / "x.log"
    pid = P.spawn_detached(["bash", "-c", "echo started; sleep 300 & wait"], log_path=log)
    assert pid in P.CHILDREN and P.pid_alive(pid)
    _members(pid, 2)
    P.stop_pid_group(pid, grace=5)
    assert not P.pid_alive(pid) and not P.group_members(pid)  # returns only once all are gone
    assert "started" in log.read_text()
    P.stop_pid_group(pid)  # gone: returns at once


def test_pid_alive_sees_zombies_and_strangers():
    assert not P.pid_alive(None) and not P.pid_alive(0)
    assert P.pid_alive(os.getpid())
    assert P.pid_alive(1)  # someone else's process: alive, whatever our permissions
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and P._state(zombie.pid) != "Z":
        time.sleep(0.05)
    assert not P.pid_alive(zombie.pid)  # exited, not yet reaped
    zombie.wait()
    assert not P.pid_alive(zombie.pid)


def test_start_time_names_one_process():
    assert P.start_time(os.getpid()) == P.start_time(os.getpid()) is not None
    assert P.start_time(2**22 + 12345) is None
    assert any(int(e.name) == os.getpid() for e in P.proc_entries())
