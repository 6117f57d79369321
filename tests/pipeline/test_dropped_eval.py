"""A dropped adapter evaluated end to end in its own partition, on the session's real vLLM:
task_pool and the variant's base_student_metrics, then dropped_adapter and
dropped_adapter_metrics for partition `student-<sha12>` -- held-out rollouts with the adapter,
metrics, the seed's bars as checks of that partition, deltas over the recorded base, lineage
under the adapter's name and not the variant's."""

from __future__ import annotations

import dataclasses
import shutil

import dagster as dg
import serve_helpers as H

from coop_dag.training.adapters import adapter_name, write_lineage


def test_dropped_adapter_is_evaluated_in_its_own_partition(vllm_server, tmp_path, monkeypatch):
    from assets import evaluation
    from assets.dropped import dropped_adapter, dropped_adapter_metrics
    from assets.partitions import DROPPED_ADAPTERS
    from assets.tasks import task_pool
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.rollout import RolloutResource
    from resources.serving import ServingResource

    variant = evaluation.VARIANTS["templated"]
    monkeypatch.setitem(  # the session server serves tiny-qwen3; the variant's rollout settings
        evaluation.VARIANTS, "templated", dataclasses.replace(variant, student=H.STUDENT)
    )
    drop = tmp_path / "adapters" / "ext"
    shutil.copytree(H.adapters()["A"], drop)
    write_lineage(drop, {"variant": "templated", "student": H.STUDENT, "trainer": "external"})
    name = adapter_name(drop)
    lineage = LineageResource(path=str(tmp_path / "lineage.duckdb"))
    resources = {
        "dataset": DatasetResource(subset="smoke"),
        "rollout": RolloutResource(runs_dir=str(tmp_path / "runs"), concurrency=2),
        "serving": ServingResource(url=vllm_server.url, probe_max_tokens=8),
        "lineage": lineage,
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([task_pool], resources=resources, instance=instance).success
    base = dg.materialize(
        [task_pool, evaluation.base_student_metrics],
        selection=["base_student_metrics"],
        partition_key="templated",
        resources=resources,
        instance=instance,
    )
    assert base.success
    instance.add_dynamic_partitions(DROPPED_ADAPTERS, [name])
    result = dg.materialize(
        [task_pool, dropped_adapter, dropped_adapter_metrics],
        selection=["dropped_adapter", "dropped_adapter_metrics"],
        partition_key=name,
        resources=resources,
        instance=instance,
        run_config={"ops": {"dropped_adapter": {"config": {"adapter_dir": str(drop)}}}},
    )
    assert result.success
    metrics = result.output_for_node("dropped_adapter_metrics")
    assert metrics["summary"]["n_pairs"] > 0
    assert set(metrics["delta_over_base"]) == {"plan_first", "plan_content", "follow_through"}
    checks = result.get_asset_check_evaluations()
    bars = [c for c in checks if c.asset_key == dg.AssetKey("dropped_adapter_metrics")]
    assert len(bars) == 3 and all(c.partition == name for c in bars)
    # rollouts under the variant's student dir, keyed by the adapter's content name
    assert (tmp_path / "runs" / "templated" / "student" / name / "coop").is_dir()
    row = lineage.store.latest("dropped_adapter_metrics", name)
    assert row["facts"]["adapter_name"] == name and row["facts"]["trainer"] == "external"
    assert set(row["upstream"]) == {"dropped_adapter", "rollouts"}
    assert lineage.store.latest("behaviour_metrics", "templated") is None  # variant untouched
