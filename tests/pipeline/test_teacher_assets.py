"""teacher_rollouts -> teacher_validation -> rejection_sampled_pairs for the templated teacher,
on the bundled `smoke` subset; kill-and-resume of teacher_rollouts; API teacher without a key."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from coop_dag import BUNDLED_DATASET
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.manifests import load_manifest

ROOT = Path(__file__).resolve().parents[2]
TEACHER_ASSETS = ["task_pool", "teacher_rollouts", "teacher_validation", "rejection_sampled_pairs"]


@pytest.fixture
def lite_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COOP_DAG_SUBSET", "smoke")
    monkeypatch.setenv("COOP_DAG_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


def test_templated_teacher_chain(lite_env):
    from definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    common = dict(resources=defs.resources, instance=instance)
    assert dg.materialize(list(defs.assets), selection=["task_pool"], **common).success
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=TEACHER_ASSETS[1:],
        partition_key="templated",
        **common,
    )
    assert result.success
    validation = result.output_for_node("teacher_validation")
    rows = validation["per_pair"]
    assert len(rows) == 4
    perfect = [
        r
        for r in rows
        if r["plan_first"] and r["plan_content"] and all(r["follow_through"].values())
    ]
    assert len(perfect) / len(rows) >= 0.95
    # both_passed on every pair whose gold patches merge cleanly
    merges = {}
    for pair in discover_pairs(BUNDLED_DATASET, subset="smoke"):
        merges[pair.pair_id] = load_manifest(pair.task)["merges"][pair.pair_key]
    for row in rows:
        if merges[row["pair_id"]] == "clean":
            assert row["eval"]["both_passed"], row["pair_id"]
    kept = result.output_for_node("rejection_sampled_pairs")
    assert set(kept["pair_ids"]) == {r["pair_id"] for r in perfect}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["some_pairs_survive"] is True
    assert checks["teacher_follow_through_ceiling"] is True


def test_api_teacher_without_key_fails_before_any_rollout(lite_env, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    from definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    common = dict(resources=defs.resources, instance=instance, raise_on_error=False)
    assert dg.materialize(list(defs.assets), selection=["task_pool"], **common).success
    result = dg.materialize(
        list(defs.assets), selection=["teacher_rollouts"], partition_key="gemini-api", **common
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "GEMINI_API_KEY" in error.to_string()
    assert not (lite_env / "runs" / "gemini-api").exists()


def _pair_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("coop/*/*/f*_f*") if p.is_dir())


@pytest.mark.faults
def test_killed_teacher_rollouts_resume_only_missing_pairs(tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "COOP_DAG_SUBSET": "smoke",
        "COOP_DAG_RUNS_DIR": str(tmp_path / "runs"),
        "COOP_DAG_ROLLOUT_CONCURRENCY": "1",
    }
    (tmp_path / "home").mkdir()
    dagster = str(Path(sys.executable).parent / "dagster")
    base = [dagster, "asset", "materialize", "-m", "definitions"]
    subprocess.run(
        base + ["--select", "task_pool"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    cmd = base + ["--select", "teacher_rollouts", "--partition", "templated"]
    run_dir = tmp_path / "runs" / "templated" / "teacher"
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(_pair_dirs(run_dir)) < 1:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = _pair_dirs(run_dir)
    assert 1 <= len(done) < 4, "kill should land part-way"
    before = {}
    for d in done:  # every published pair is complete: nothing half-written
        for name in ("result.json", "eval.json", "conversation.json"):
            assert (d / name).is_file(), d / name
        assert len(list(d.glob("agent*_traj.json"))) == 2
        before[d] = (d / "result.json").stat().st_mtime_ns
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _pair_dirs(run_dir)
    assert len(after) == 4
    for d, mtime in before.items():  # completed pairs were not re-run
        assert (d / "result.json").stat().st_mtime_ns == mtime
    assert not list(run_dir.glob("coop/*/*/.f*"))  # no staging leftovers
    statuses = {json.loads((d / "result.json").read_text())["status"] for d in after}
    assert statuses == {"Completed"}


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI (no daemon)")
def test_docker_sandbox_without_a_daemon_fails_before_any_pair(lite_env, monkeypatch):
    """COOP_DAG_SANDBOX=docker on a host with the docker CLI but no daemon (this machine):
    teacher_rollouts fails at once, naming Docker and the variable; no pair ran."""
    from coop_dag.config.hostcheck import docker_status

    if docker_status().ok:
        pytest.skip("a Docker daemon answers here: nothing to refuse")
    monkeypatch.setenv("COOP_DAG_SANDBOX", "docker")
    from definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    common = dict(resources=defs.resources, instance=instance, raise_on_error=False)
    assert dg.materialize(list(defs.assets), selection=["task_pool"], **common).success
    result = dg.materialize(
        list(defs.assets), selection=["teacher_rollouts"], partition_key="templated", **common
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "COOP_DAG_SANDBOX=docker" in error and "needs Docker" in error
    assert "no Docker daemon answers `docker info`" in error
    assert "COOP_DAG_SANDBOX=local" in error  # the way out
    assert not _pair_dirs(lite_env / "runs" / "templated" / "teacher")
