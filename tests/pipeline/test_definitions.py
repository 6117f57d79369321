"""The code location loads, its partitions come from variants.yaml, and task_pool materialises
through the Python API and through `dagster asset materialize` from the repo root."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from coop_dag.config.variants import load_variants
from coop_dag.dataset.tasks import BUNDLED_SPLIT

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_with_variant_partitions():
    from assets.partitions import variant_partitions
    from definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "task_pool" in keys
    assert variant_partitions.get_partition_keys() == list(load_variants())
    # the controls run per variant and the report reads them (so `make demo` runs them first)
    graph = defs.resolve_asset_graph()
    report_parents = {
        k.to_user_string() for k in graph.get(dg.AssetKey("distillation_report")).parent_keys
    }
    for control in ("base_steering_metrics", "control_copier_metrics"):
        assert graph.get(dg.AssetKey(control)).partitions_def == variant_partitions
        assert control in report_parents


def test_task_pool_materialises_with_split_by_repo():
    from definitions import defs

    result = dg.materialize(
        [defs.get_assets_def("task_pool")],
        resources={"dataset": defs.resources["dataset"]},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    summary = result.output_for_node("task_pool")
    assert len(summary["pairs"]) >= 78
    assert summary["test_repos"] == list(BUNDLED_SPLIT.test)
    assert summary["validation_repos"] == list(BUNDLED_SPLIT.validation)
    for pair in summary["pairs"]:
        assert pair["split"] == BUNDLED_SPLIT.split_of(pair["repo"])
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert meta["n_pairs"].value == len(summary["pairs"])
    assert meta["n_test_pairs"].value >= 12 and meta["n_validation_pairs"].value >= 6
    assert meta["n_rejected_pairs"].value == 0


def test_cli_materialize_task_pool_from_repo_root(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "definitions",
            "--select",
            "task_pool",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stderr + proc.stdout
