"""A backfill over two variants runs the whole asset graph end to end, the way the UI runs one.

The code location is pointed at `tests/fixtures/variants_two_tiny.yaml` (COOP_DAG_VARIANTS):
two variants, one templated teacher, the random-init `tiny-qwen3` student, upweight x12 vs
x1. Partitions are built when the code location is imported, so everything Dagster runs in
a subprocess with that environment, on a temporary DAGSTER_HOME and runs directory.

The backfill is a real asset backfill: the `launchPartitionBackfill` GraphQL mutation the UI
sends (asset selection = the whole graph, partitions = both variants, plus launch config),
executed by the backfill daemon's own iteration (`execute_backfill_iteration`) and the run
queue daemon's, ticking every second instead of every 30 s, against the code server that
`workspace.yaml` starts. Dagster therefore materialises the unpartitioned `task_pool` once,
each variant's chain in its own run, and `distillation_report` once both chains are done.

The launch config (what the UI's backfill dialog accepts) only makes it fast and private:
an in-process executor (no step subprocesses), a free port for the embedded student server,
short probes. The fixture's `tiny-smoke` recipe trains for four steps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "variants_two_tiny.yaml"
CHAIN = [
    "teacher_rollouts",
    "teacher_validation",
    "rejection_sampled_pairs",
    "tito_parquet",
    "lora_checkpoint",
    "served_adapter",
    "base_student_metrics",
    "student_rollouts",
    "behaviour_metrics",
]
# the controls the report sets beside the student (no lineage link to behaviour_metrics)
CONTROLS = ["base_steering_metrics", "control_copier_metrics"]
GRAPH = ["task_pool", *CHAIN, *CONTROLS, "distillation_report"]
LAUNCH = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""
DRIVER_TIMEOUT = 600


# -- the driver: runs in a subprocess (`python tests/e2e/test_backfill.py '<spec as JSON>'`) -------


def drive(spec: dict) -> None:
    """Launch the backfill through GraphQL and tick the backfill and run-queue daemons until
    it is done; write {backfill_id, status} to spec["out"]."""
    import logging

    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )
    from dagster_graphql.test.utils import execute_dagster_graphql

    logging.basicConfig(level=logging.INFO)
    log = logging.getLogger("backfill")
    target = WorkspaceFileTarget([str(ROOT / "workspace.yaml")])
    with (
        dg.DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, target) as workspace,
        QueuedRunCoordinatorDaemon(interval_seconds=1) as queue,
    ):
        params = {
            "assetSelection": [{"path": [key]} for key in spec["assets"]],
            "partitionNames": spec["partitions"],
            "runConfigData": spec["run_config"],
            "title": "two tiny variants",
        }
        result = execute_dagster_graphql(
            workspace.create_request_context(), LAUNCH, {"backfillParams": params}
        )
        launched = (result.data or {}).get("launchPartitionBackfill") or {}
        if launched.get("__typename") != "LaunchBackfillSuccess":
            raise SystemExit(f"launchPartitionBackfill failed: {launched} {result.errors}")
        backfill_id = launched["backfillId"]
        while True:
            list(execute_backfill_iteration(workspace, log))
            list(queue.run_iteration(workspace))
            backfill = instance.get_backfill(backfill_id)
            if backfill.status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
                break
            time.sleep(1)
    Path(spec["out"]).write_text(
        json.dumps({"backfill_id": backfill_id, "status": backfill.status.value})
    )


# -- the test -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_driver(spec: dict, env: dict, log_path: Path) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers go with it on a timeout
        )
        try:
            proc.wait(timeout=DRIVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, log_path.read_text()[-6000:]


def _materialisations(instance, asset: str, partition: str | None = None) -> list:
    import dagster as dg

    return instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=[partition] if partition else None,
        ),
        limit=10,
    ).records


def _failures(home: Path, backfill_id: str) -> list[str]:
    """Each failed run's failure events (step and run), so a failed backfill says why."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        failures = []
        for run in runs:
            if run.status == dg.DagsterRunStatus.SUCCESS:
                continue
            for event in instance.all_logs(run.run_id):
                kind = event.dagster_event.event_type_value if event.dagster_event else None
                if kind in ("STEP_FAILURE", "RUN_FAILURE"):
                    error = getattr(event.dagster_event.event_specific_data, "error", None)
                    detail = error.to_string()[-3000:] if error else event.message
                    failures.append(f"{run.tags.get('dagster/partition')} {kind}: {detail}")
        return failures


def _meta(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_backfill_over_two_tiny_variants_runs_the_whole_graph(tmp_path, vllm_server):
    from coop_dag.config.variants import load_variants

    variants = load_variants(FIXTURE)
    names = list(variants)
    assert len(names) == 2 and len({v.upweight for v in variants.values()}) == 2
    assert {v.student for v in variants.values()} == {"tiny-qwen3"}

    home, runs = tmp_path / "home", tmp_path / "runs"
    home.mkdir()
    (home / "dagster.yaml").write_text("{}\n")  # the default instance, quietly
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOP_DAG_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "DAGSTER_HOME": str(home),
            "COOP_DAG_VARIANTS": str(FIXTURE),
            "COOP_DAG_SUBSET": "smoke",
            "COOP_DAG_RUNS_DIR": str(runs),  # runs, adapters, lineage, serving state
        }
    )
    if os.environ.get("COOP_DAG_CACHE"):
        env["COOP_DAG_CACHE"] = os.environ["COOP_DAG_CACHE"]  # the built tiny-qwen3, shared
    spec = {
        "assets": GRAPH,
        "partitions": names,
        "run_config": {
            "execution": {"config": {"in_process": {}}},
            "resources": {
                # the session's vLLM (tiny-qwen3): both runs' adapters on one base
                "serving": {"config": {"url": vllm_server.url, "probe_max_tokens": 16}},
                "training": {"config": {"probe_prompts": 2, "probe_max_new_tokens": 16}},
            },
        },
        "out": str(tmp_path / "backfill.json"),
    }
    started = time.monotonic()
    _run_driver(spec, env, tmp_path / "driver.log")
    print(f"backfill over {names}: {time.monotonic() - started:.0f} s")

    check_backfill(tmp_path, variants)


def check_backfill(tmp_path: Path, variants: dict) -> None:
    """What the backfill in `tmp_path` must have produced (see the module docstring)."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    from coop_dag.eval.lineage import LineageStore

    names = list(variants)
    home, runs = tmp_path / "home", tmp_path / "runs"
    done = json.loads((tmp_path / "backfill.json").read_text())
    assert done["status"] == BulkActionStatus.COMPLETED_SUCCESS.value, (
        done,
        _failures(home, done["backfill_id"]),
    )
    backfill_id = done["backfill_id"]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs_of = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert runs_of and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs_of)
        in_backfill = {r.run_id for r in runs_of}
        # each variant's chain ran in runs tagged with its partition
        assert {r.tags.get("dagster/partition") for r in runs_of} >= set(names)

        # unpartitioned upstream: once
        (pool,) = _materialisations(instance, "task_pool")
        assert pool.run_id in in_backfill
        n_held_out = _meta(pool)["n_test_pairs"]
        assert n_held_out > 0

        per_variant: dict[str, dict[str, dict]] = {}
        last_metrics = 0.0
        for name in names:
            per_variant[name] = {}
            for asset in (*CHAIN, *CONTROLS):
                records = _materialisations(instance, asset, name)
                assert len(records) == 1, f"{asset}[{name}]: {len(records)} materialisations"
                assert records[0].run_id in in_backfill
                per_variant[name][asset] = _meta(records[0])
                if asset == "behaviour_metrics":
                    last_metrics = max(last_metrics, records[0].timestamp)

        adapters, trained_rows = {}, {}
        for name, meta in per_variant.items():
            upweight = variants[name].upweight
            # the variant's upweight is in its data and its adapter's lineage
            assert meta["tito_parquet"]["upweight"] == upweight
            assert meta["lora_checkpoint"]["lineage"]["variant"] == name
            adapter = meta["lora_checkpoint"]["adapter_name"]
            adapter_dir = Path(meta["lora_checkpoint"]["adapter_dir"])
            assert adapter_dir.parent.name == name and adapter_dir.name == adapter
            on_disk = json.loads((adapter_dir / "lineage.json").read_text())
            assert on_disk["variant"] == name and on_disk["adapter_name"] == adapter
            assert on_disk["upweight"]["factor"] == upweight
            trained_rows[name] = on_disk["train_rows"]
            # that adapter, and no other, was served and rolled out
            assert meta["served_adapter"]["adapter_name"] == adapter
            assert meta["served_adapter"]["differs_from_base"] is True
            assert meta["student_rollouts"]["adapter_name"] == adapter
            assert meta["student_rollouts"]["pairs_done"] == n_held_out
            assert meta["behaviour_metrics"]["n_pairs"] == n_held_out
            assert meta["base_student_metrics"]["n_pairs"] == n_held_out
            for control in CONTROLS:  # the same test pairs, the same runtime
                assert meta[control]["n_pairs"] == n_held_out
            adapters[name] = adapter
        assert len(set(adapters.values())) == 2, adapters  # one adapter per variant
        # the recipe trains upweight copies as copies: the heavier upweight saw more rows
        heavy, light = sorted(names, key=lambda n: variants[n].upweight, reverse=True)
        assert trained_rows[heavy] > trained_rows[light], trained_rows

        # unpartitioned downstream: once, after both variants' metrics, a row per variant
        (report,) = _materialisations(instance, "distillation_report")
        assert report.run_id in in_backfill
        assert report.timestamp >= last_metrics
        report_meta = _meta(report)
        assert report_meta["variants"] == len(names)
        lines = report_meta["report"].splitlines()
        for name in names:  # a section per variant with every row
            assert sum(line.startswith(f"### {name} (seed ") for line in lines) == 1, lines
        for label in ("teacher ★", "**student**", "base (untrained)", "base + steering"):
            assert sum(line.startswith(f"| {label} |") for line in lines) == len(names), label
        assert sum(line.startswith("| copier (control) |") for line in lines) == len(names)
        assert (runs / "report" / "report.md").read_text().strip() == report_meta["report"].strip()

    # every number in the report traces back to its variant's own adapter and upweight
    store = LineageStore(runs / "lineage.duckdb")
    for name in names:
        chain = store.metric("follow_through", name)["chain"]
        by_asset = {node["asset"]: node for node in chain}
        assert set(CHAIN) <= set(by_asset), sorted(by_asset)
        # (content versions may coincide across variants, e.g. both students scoring 0)
        assert all(node["variant"] == name for node in chain), chain
        assert by_asset["tito_parquet"]["facts"]["upweight"] == variants[name].upweight
        assert by_asset["served_adapter"]["facts"]["adapter_name"] == adapters[name]
        assert {node["run_id"] for node in chain} <= in_backfill


if __name__ == "__main__":
    drive(json.loads(sys.argv[1]))
