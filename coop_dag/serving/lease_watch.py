"""Keep a server alive only while somebody holds a lease on it.

    python -m coop_dag.serving.lease_watch LEASE_DIR GRACE_S -- COMMAND...

Runs COMMAND (a vLLM server) as its child, in the watcher's own process group (started with
setsid by `coop_dag.serving.server`, so stopping the group stops the server, its engine and its
workers), and polls LEASE_DIR (one file per holder pid). Once no live process has held a lease for
GRACE_S seconds -- every run that used the server ended, including runs killed with SIGKILL,
whose exit handlers never ran -- it stops the server's process group and exits. It also exits
when the server does, with its status. SIGTERM stops both. Standard library only, no torch:
the watcher costs a few MB beside a server of gigabytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from coop_dag.util.processes import pid_alive

POLL_S = 2.0


def live_holders(lease_dir: Path) -> list[int]:
    """pids with a lease file in ``lease_dir`` that are alive (not zombies)."""
    files = lease_dir.glob("*") if lease_dir.is_dir() else []
    pids = [int(f.name) for f in files if f.name.isdigit()]
    return [pid for pid in pids if pid_alive(pid)]


def _stop_group(child: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the whole group (the watcher ignores it), SIGKILL after ``grace``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the watcher goes with it


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    lease_dir, grace, command = Path(args[0]), float(args[1]), args[3:]
    child = subprocess.Popen(command)
    last_held = time.monotonic()
    while child.poll() is None:
        time.sleep(POLL_S)
        if live_holders(lease_dir):
            last_held = time.monotonic()
        elif time.monotonic() - last_held > grace:
            print(f"lease_watch: no live lease in {lease_dir} for {grace:g}s; stopping", flush=True)
            _stop_group(child)
            return 0
    return child.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
