"""No network attempt at import: loading the code location and then importing litellm (as a
run's first LLM call does, through coop_dag.agent.models) opens no connection, although the
environment does not set LITELLM_LOCAL_MODEL_COST_MAP -- the code sets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run first in the child: any attempt to resolve a name or connect over IP is recorded and
# refused (unix sockets and loopback stay allowed: Dagster's own machinery may use them).
GUARD = r"""
import json, os, socket, sys
ATTEMPTS = []
_LOCAL = {"localhost", "127.0.0.1", "::1", "", None}
_getaddrinfo = socket.getaddrinfo
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

def getaddrinfo(host, *args, **kwargs):
    if (host.decode() if isinstance(host, bytes) else host) not in _LOCAL:
        ATTEMPTS.append(f"resolve {host}")
        raise socket.gaierror(socket.EAI_NONAME, "network blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)

def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        ATTEMPTS.append(f"connect {address!r}")
        raise OSError("network blocked by the test")

def connect(self, address):
    _check(self, address)
    return _connect(self, address)

def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)

socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
"""

REPORT = r"""
print("RESULT " + json.dumps({
    "attempts": ATTEMPTS,
    "cost_map_env": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP"),
}))
"""


def _run(body: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["DAGSTER_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", GUARD + body + REPORT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_litellm_alone_would_fetch_its_price_map(tmp_path: Path) -> None:
    """The guard sees the attempt the project must prevent (so the next test can fail)."""
    result = _run("import litellm\n", tmp_path)
    assert result["cost_map_env"] is None
    assert result["attempts"], "litellm made no network attempt: the guard proves nothing"


def test_loading_the_code_location_and_litellm_makes_no_network_attempt(tmp_path: Path) -> None:
    result = _run(
        "import definitions\n"
        "assert definitions.defs is not None\n"
        "import coop_dag.agent.models\n"
        "import litellm\n",
        tmp_path,
    )
    assert result["attempts"] == []
    assert result["cost_map_env"] == "True"


def test_the_cli_makes_no_network_attempt(tmp_path: Path) -> None:
    result = _run(
        "from coop_dag.cli import main\nimport litellm\nassert main(['tasks']) == 0\n", tmp_path
    )
    assert result["attempts"] == []
