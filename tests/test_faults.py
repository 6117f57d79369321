"""Faults are errors, never scores: a model server that dies in the middle of the held-out
rollouts fails `base_student_metrics` naming the pairs and the cause, and no rate of that run
reaches the lineage store (the report would otherwise compare the student against a "base"
that scored 0 because its server was gone)."""

from __future__ import annotations

import dataclasses

import dagster as dg
import serve_helpers as H


def test_a_dead_model_server_fails_the_base_rollouts_and_scores_nothing(
    vllm_server, tmp_path, monkeypatch
):
    from assets import evaluation
    from assets.tasks import task_pool
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.rollout import RolloutResource
    from resources.serving import ServingResource

    variant = evaluation.VARIANTS["templated"]
    monkeypatch.setitem(
        evaluation.VARIANTS, "templated", dataclasses.replace(variant, student=H.STUDENT)
    )
    lineage = LineageResource(path=str(tmp_path / "lineage.duckdb"))
    with H.FaultProxy(vllm_server.url, die_after=2) as proxy:
        result = dg.materialize(
            [task_pool, evaluation.base_student_metrics],
            partition_key="templated",
            resources={
                "dataset": DatasetResource(subset="smoke"),
                "rollout": RolloutResource(runs_dir=str(tmp_path / "runs")),
                "serving": ServingResource(url=proxy.url),
                "lineage": lineage,
            },
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [
        e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    ]
    data = failure.event_specific_data
    text = str(data.error) + str(data.user_failure_data)
    assert "ended on an infrastructure error" in text and "ModelError" in text
    assert "webroute_task" in text or "mdrender_task" in text  # the pairs are named
    # no score of this run reached the lineage store
    assert not (tmp_path / "lineage.duckdb").exists() or (
        lineage.store.latest("base_student_metrics", "templated") is None
    )
