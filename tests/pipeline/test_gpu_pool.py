"""GPU concurrency: every asset that holds the GPUs is in the `gpu` pool, and with
deploy/dagster.yaml's limit a second partition's GPU step, launched from another process
against the same real instance while the first holds the pool, waits for it: the two never
overlap (and do overlap once the pool has two slots, so the test can tell).

The second run is launched once the first step holds the slot, not at the same instant: on
SQLite storage Dagster claims a slot with a read and then a write, so two claims within the
same few milliseconds can both succeed (CI saw both steps start 3 ms apart). Postgres locks
the row; deploy/dagster.yaml says so."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import GPU_POOL
from coop_dag import REPO_ROOT

GPU_ASSETS = {
    "teacher_rollouts",  # a `served` teacher is vLLM on the GPUs
    "lora_checkpoint",
    "served_adapter",
    "student_rollouts",
    "base_student_metrics",
    "dropped_adapter",
    "dropped_adapter_metrics",
    "base_steering_metrics",  # the served base model, like base_student_metrics
}
STORAGE_IN_IMAGE = "/opt/dagster/storage"


def test_every_gpu_asset_is_in_the_pool_and_nothing_else():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    in_pool = {name for name, p in pools.items() if p and GPU_POOL in p}
    assert in_pool == GPU_ASSETS


@pytest.fixture()
def deploy_home(tmp_path):
    """deploy/dagster.yaml as a DAGSTER_HOME, its storage moved under tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    text = (REPO_ROOT / "deploy" / "dagster.yaml").read_text()
    assert STORAGE_IN_IMAGE in text
    (home / "dagster.yaml").write_text(text.replace(STORAGE_IN_IMAGE, str(tmp_path / "storage")))
    # Create the storage once, here: two processes creating a fresh SQLite storage at the
    # same moment can both stamp its alembic revision, and then neither can open it.
    # The pool's slots likewise: two processes claiming from a pool nobody created yet can
    # both create it (CI saw both steps start at once). Create it with the configured limit.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limit = instance.get_concurrency_config().pool_config.default_pool_limit
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, limit)
    return home


def _launch(part: str, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.gpu_pool_job", part, str(out)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _two_partitions(home: Path, out: Path) -> dict[str, dict]:
    """Run the first partition's GPU step, and once it holds the pool, the second's."""
    out.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    procs = [_launch("templated", out, env)]
    deadline = time.monotonic() + 150
    while not (out / "templated.start").exists() and procs[0].poll() is None:
        assert time.monotonic() < deadline, "the first GPU step never started"
        time.sleep(0.1)
    procs.append(_launch("templated-up1", out, env))
    for p in procs:
        log, _ = p.communicate(timeout=180)
        assert p.returncode == 0, log[-3000:]
    return {f.stem: json.loads(f.read_text()) for f in out.glob("*.json")}


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_gpu_steps_of_two_partitions_never_overlap(deploy_home, tmp_path):
    steps = _two_partitions(deploy_home, tmp_path / "limit1")
    assert set(steps) == {"templated", "templated-up1"}
    a, b = steps.values()
    assert not _overlap(a, b), steps
    assert not a["saw"] and not b["saw"]  # neither started while the other held the slot

    # the control: with two slots the same two steps run side by side
    os.environ["DAGSTER_HOME"], saved = str(deploy_home), os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
            instance.event_log_storage.set_concurrency_slots(GPU_POOL, 2)
    finally:
        if saved is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = saved
    steps = _two_partitions(deploy_home, tmp_path / "limit2")
    a, b = steps.values()
    assert _overlap(a, b) and (a["saw"] or b["saw"]), steps
