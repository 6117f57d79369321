"""coop_dag.util.scratch: temporary directories of a killed run are removed by the next run, with
real processes: a run holding an embedded Redis server and a sandbox is SIGKILLed, the next
one starts and sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from coop_dag.util.scratch import OWNER_FILE, owned_tempdir, owner_alive, sweep_stale

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent may be slow to reap it)


def _python(code: str, tmpdir: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )


def test_only_dead_owners_directories_are_swept(tmp_path: Path) -> None:
    mine = owned_tempdir("coop-sbx-", tmp_path)
    assert json.loads((mine / OWNER_FILE).read_text())["pid"] == os.getpid()
    foreign = tmp_path / "coop-sbx-no-owner"  # not created by this module: never touched
    foreign.mkdir()
    dead = owned_tempdir("coop-sbx-", tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    (dead / OWNER_FILE).write_text(json.dumps({"pid": proc.pid, "start": "1", "host": None}))
    recycled = owned_tempdir("coop-sbx-", tmp_path)  # a live pid, but another start time
    (recycled / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": "0"}))
    other = owned_tempdir("coop-dag-redis-", tmp_path)

    assert owner_alive(json.loads((mine / OWNER_FILE).read_text()))
    assert sorted(sweep_stale("coop-sbx-", tmp_path)) == sorted([dead, recycled])
    assert mine.is_dir() and foreign.is_dir() and other.is_dir()
    assert not dead.exists() and not recycled.exists()


def test_a_killed_runs_redis_and_sandbox_dirs_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    killed = _python(
        """
        import json, os, signal
        from coop_dag import BUNDLED_DATASET
        from coop_dag.agent.episode import SCRATCH_PREFIX
        from coop_dag.agent.redis_server import EmbeddedRedis
        from coop_dag.agent.sandbox.local import LocalSandbox
        from coop_dag.util.scratch import owned_tempdir
        from coop_dag.dataset.discovery import discover_tasks

        server = EmbeddedRedis().start()
        scratch = owned_tempdir(SCRATCH_PREFIX)  # as run_pair makes it
        sandbox = LocalSandbox(discover_tasks(BUNDLED_DATASET)[0], scratch, prefix="agent1-")
        print(json.dumps({
            "redis_dir": str(server._data_dir),
            "redis_pid": server._server._process.pid,
            "scratch": str(scratch),
            "workspace": sandbox.workdir,
        }), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit
        """,
        tmp,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = json.loads(killed.stdout.splitlines()[-1])
    try:
        assert Path(left["redis_dir"]).is_dir() and Path(left["workspace"]).is_dir()
        assert _alive(left["redis_pid"]), "the orphaned server should outlive its run"
        keep = tmp / "coop-sbx-unowned"  # someone else's directory with the same prefix
        keep.mkdir()

        rerun = _python(
            """
            from coop_dag.agent.episode import EpisodeSettings, run_pairs
            from coop_dag.agent.redis_server import EmbeddedRedis

            with EmbeddedRedis() as server:
                run_pairs([], None, None, EpisodeSettings(run_dir="unused"))
            """,
            tmp,
        )
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert not Path(left["redis_dir"]).exists()
        assert not Path(left["scratch"]).exists()
        deadline = time.monotonic() + 10
        while _alive(left["redis_pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(left["redis_pid"]), "the orphaned server was not stopped"
        assert keep.is_dir()
        assert sorted(p.name for p in tmp.iterdir()) == ["coop-sbx-unowned"]
    finally:
        if _alive(left["redis_pid"]):
            os.kill(left["redis_pid"], signal.SIGKILL)
