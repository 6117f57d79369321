"""The Dagster UI renders the coop-dag asset graph in a real browser.

`dagster dev` (session fixture `dagster_dev`) serves the UI; headless Chromium (Debian's
`chromium`, installed by scripts/bootstrap.sh) opens the asset graph page of every asset group
(`/asset-groups~group:"<group>"`, the page the asset catalog links to) and the test reads the
asset names back out of the rendered graph: the text of the nodes React drew inside the graph's
SVG (`<foreignObject>`). So this proves more than GraphQL does: the UI bundle loads and runs,
queries the webserver, lays out the graph and draws every asset, the pipeline's stages
(task_pool ... distillation_report) included. A screenshot of each group's graph is left in
the test's tmp dir.

Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (NUL-terminated
JSON on the child's fds 3 and 4), so no Python package or downloaded browser is needed, and
each page is polled until its assets appear instead of guessing a fixed wait. A missing
chromium is a failure, not a skip.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster_dev_helpers import graphql

# The pipeline's stages, by their asset names in definitions.py; every other asset GraphQL
# reports is checked too.
REQUIRED = {
    "task_pool",
    "teacher_rollouts",
    "tito_parquet",
    "lora_checkpoint",
    "student_rollouts",
    "behaviour_metrics",
    "distillation_report",
}
# --no-sandbox: we run as root. The networking flags keep an offline Chromium from stalling
# on refused background connections (component updates, sync, QUIC probes).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]
PAGE_TIMEOUT = 30  # seconds for one group's graph to show its assets (~1-2 s here)
# Text of every leaf element inside the graph's nodes. A node shows its asset's name as one
# leaf (a middle-truncated name keeps the full name in a hidden measuring leaf).
GRAPH_TEXTS_JS = """Array.from(document.querySelectorAll('svg foreignObject *'))
  .filter(e => e.childElementCount === 0).map(e => e.textContent.trim())"""


class Chromium:
    """Headless Chromium on --remote-debugging-pipe: commands go in on the child's fd 3,
    replies and events come out of its fd 4. One page target, attached in flat mode."""

    def __init__(self, exe: str, workdir: Path):
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()

        def wire_fds_3_and_4():  # runs in the child, before exec
            up = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]
            os.dup2(up[0], 3)
            os.dup2(up[1], 4)

        with open(workdir / "chromium.log", "wb") as log:
            self.proc = subprocess.Popen(
                [exe, *FLAGS, f"--user-data-dir={workdir / 'profile'}",
                 "--remote-debugging-pipe", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(3, 4), preexec_fn=wire_fds_3_and_4, start_new_session=True,
            )  # fmt: skip
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._last_id = 0
        self._session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def _next_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer on its DevTools pipe")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.wait()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        """Send one command (to the page once attached, else to the browser); its result."""
        self._last_id += 1
        msg = {"id": self._last_id, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_message(deadline)
            if reply.get("id") == self._last_id:  # anything else is an event: ignored
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def goto(self, url: str) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"Chromium could not load {url}: {result['errorText']}")

    def evaluate(self, js: str):
        return self.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get(
            "value"
        )

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(ProcessLookupError):  # renderers etc. share its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@contextlib.contextmanager
def chromium_page(exe: str, workdir: Path) -> Iterator[Chromium]:
    browser = Chromium(exe, workdir)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the chromium executable; listed before `dagster_dev` so a missing browser
    fails at once, not after the UI has started."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not installed: this UI test needs Debian's `chromium` package. "
            "`make bootstrap` (scripts/bootstrap.sh) installs it; or `apt-get install chromium`.",
            pytrace=False,
        )
    return exe


def _assets_by_group(port: int) -> dict[str, set[str]]:
    data = graphql(port, "{ assetNodes { assetKey { path } groupName } }")
    groups: dict[str, set[str]] = {}
    for node in data["data"]["assetNodes"]:
        groups.setdefault(node["groupName"], set()).add("/".join(node["assetKey"]["path"]))
    return groups


def test_asset_graph_renders_every_asset_in_chromium(chromium, dagster_dev, tmp_path):
    groups = _assets_by_group(dagster_dev)
    known = set().union(*groups.values())
    assert REQUIRED <= known, f"GraphQL does not list {sorted(REQUIRED - known)}"

    missing: dict[str, str] = {}
    with chromium_page(chromium, tmp_path) as page:
        for group, names in sorted(groups.items()):
            selection = urllib.parse.quote(f'group:"{group}"', safe="")
            page.goto(f"http://127.0.0.1:{dagster_dev}/asset-groups~{selection}")
            deadline = time.monotonic() + PAGE_TIMEOUT
            while True:
                drawn = set(page.evaluate(GRAPH_TEXTS_JS) or [])
                if names <= drawn or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            page.screenshot(tmp_path / f"asset-graph-{group}.png")
            if not names <= drawn:
                text = (page.evaluate("document.body.innerText") or "")[:600]
                missing[group] = f"{sorted(names - drawn)}; page text: {text!r}"

    assert not missing, (
        f"assets not drawn in the asset graph after {PAGE_TIMEOUT}s (screenshots and "
        f"chromium.log in {tmp_path}):\n" + "\n".join(f"  {g}: {m}" for g, m in missing.items())
    )
