"""Shared by tests/e2e/test_dagster_dev.py and tests/e2e/test_ui.py (through the session fixture
`dagster_dev` in conftest.py): start `dagster dev` on a free port under a throwaway
DAGSTER_HOME, wait until GraphQL lists the assets, stop it by its process group.

`dagster dev` ignores SIGTERM when backgrounded from a script, so it is started with setsid
(its own process group: webserver, daemon and code servers) and the whole group is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180  # seconds; loading the code location takes ~30 s on a 2-CPU machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def asset_keys(port: int) -> set[str]:
    data = graphql(port, "{ assetNodes { assetKey { path } } }")
    return {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}


@contextlib.contextmanager
def running_dagster_dev(home: Path) -> Iterator[int]:
    """Run `dagster dev -w workspace.yaml` with DAGSTER_HOME=home; yield its port once GraphQL
    lists at least one asset. Output goes to home/dagster-dev.log (quoted on failure)."""
    port = free_port()
    log = home / "dagster-dev.log"
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = ["setsid", dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=out, stderr=out
        )
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            try:
                if asset_keys(port):
                    break
            except (OSError, KeyError, TypeError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                if proc.returncode is None:
                    state = f"served no assets within {START_TIMEOUT}s"
                else:
                    state = f"exited with status {proc.returncode}"
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"`dagster dev` {state}; end of {log}:\n{tail}")
            time.sleep(2)
        yield port
    finally:
        try:  # setsid made dagster dev the leader of its own group: its pid is the group id
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
