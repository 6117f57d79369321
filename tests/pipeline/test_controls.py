"""The copier control through the real runtime: two agents in bubblewrap sandboxes, messaging
through a real Redis-protocol server, the task's tests run, then scored by coop_dag.eval.metrics.
It pastes the Files Modified list, greps it and submits -- and still clears plan_first,
plan_content and follow_through (so the report marks them "copyable"), while it never edits."""

from __future__ import annotations

import json
from pathlib import Path

from coop_dag import BUNDLED_DATASET
from coop_dag.agent.episode import pair_dir
from coop_dag.agent.rollouts import limits_from, raise_on_errors, rollout_pairs
from coop_dag.agent.teachers import CopierPolicy, copier_factory
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.eval.metrics import score_run

try:
    from tests.agent.test_agent import needs_bwrap
except ImportError:  # tests/ imported as a package
    from tests.agent.test_agent import needs_bwrap

PAIRS = {p.pair_id: p for p in discover_pairs(BUNDLED_DATASET)}


def test_copier_turns_follow_the_script():
    pair = next(p for p in PAIRS.values() if p.repo == "webroute_task")
    feature = pair.task.features[pair.feature_a]
    assert feature.files_modified  # the copier's whole input
    policy = CopierPolicy(feature, "agent2")
    commands = [
        json.loads(policy.query([], []).tool_calls[0]["function"]["arguments"])["command"]
        for _ in range(3)
    ]
    assert commands[0].startswith("send_message --wait agent2 <<'MSG'\nPlan: I'll edit ")
    assert all(f in commands[0] and f in commands[1] for f in feature.files_modified)
    assert commands[1].startswith("grep -c '' ")
    assert commands[2] == "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


@needs_bwrap
def test_copier_clears_the_planning_metrics_without_editing(redis_url, tmp_path: Path):
    # test-split pairs of two repositories, one of them two features on the same file or not
    pairs = [p for p in PAIRS.values() if p.repo in ("webroute_task", "verspec_task")][:3]
    assert len(pairs) == 3
    run_dir = tmp_path / "copier"
    summary = rollout_pairs(
        pairs,
        copier_factory(),
        run_dir,
        steering=False,
        # the held-out rollouts' limits (the same runtime as student and base)
        limits=limits_from({"max_steps": 8, "command_timeout": 30, "wait_timeout": 60}),
        model_name="copier",
        redis_url=redis_url,
        concurrency=2,
        log=lambda _: None,
    )
    raise_on_errors(summary)
    assert summary["statuses"] == {"Completed": 3}, summary["statuses"]
    s = score_run(run_dir)["summary"]
    assert s["n_pairs"] == 3 and s["n_errors"] == 0
    assert s["plan_first_rate"] == 1.0
    assert s["plan_content_rate"] == 1.0
    assert s["follow_through_rate"] == 1.0
    assert s["edit_follow_through_rate"] == 0.0  # reading is not editing
    assert s["both_passed_rate"] == 0.0
    result = json.loads((pair_dir(run_dir, pairs[0]) / "result.json").read_text())
    assert {a["status"] for a in result["agents"].values()} == {"Submitted"}


def test_control_assets_run_on_the_test_pairs_and_reach_the_report(
    vllm_server, tmp_path, monkeypatch
):
    """Both controls as Dagster assets on the smoke subset's test pairs: the copier (no model)
    and the untrained base with the steering prompt (the session's vLLM, tiny-qwen3); each is
    recorded in the lineage store and appears as its own row of distillation_report."""
    import dataclasses

    import dagster as dg
    import serve_helpers as H

    from assets import controls, evaluation
    from assets.tasks import task_pool
    from coop_dag.dataset.pool import require_pairs
    from coop_dag.eval.runlogs import iter_pairs
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.rollout import RolloutResource
    from resources.serving import ServingResource

    variant = evaluation.VARIANTS["templated"]
    tiny = dataclasses.replace(
        variant,
        student=H.STUDENT,
        student_rollout={**variant.student_rollout, "max_tokens": 24, "max_steps": 3},
    )
    monkeypatch.setitem(evaluation.VARIANTS, "templated", tiny)
    monkeypatch.setitem(controls.VARIANTS, "templated", tiny)
    lineage = LineageResource(path=str(tmp_path / "lineage.duckdb"))
    resources = {
        "dataset": DatasetResource(subset="smoke"),
        "rollout": RolloutResource(runs_dir=str(tmp_path / "runs")),
        "serving": ServingResource(url=vllm_server.url),
        "lineage": lineage,
    }
    result = dg.materialize(
        [task_pool, controls.control_copier_metrics, controls.base_steering_metrics],
        partition_key="templated",
        resources=resources,
    )
    copier = result.output_for_node("control_copier_metrics")["summary"]
    steered = result.output_for_node("base_steering_metrics")["summary"]
    n_test = len(require_pairs(result.output_for_node("task_pool"), "test"))
    assert copier["n_pairs"] == steered["n_pairs"] == n_test > 0
    assert copier["plan_first_rate"] == copier["plan_content_rate"] == 1.0
    assert copier["edit_follow_through_rate"] == 0.0
    # the steering prompt really reached the base model's agents
    run_dir = tmp_path / "runs" / "base-steering" / H.STUDENT
    [pair] = list(iter_pairs(run_dir))[:1]
    for traj in pair.trajectories.values():
        task_prompt = traj["messages"][1]["content"]  # system, then the task: the section's place
        assert "Plan-First Coordination Protocol" in task_prompt
    for asset in ("control_copier_metrics", "base_steering_metrics"):
        assert lineage.store.latest(asset, "templated") is not None

    report = dg.materialize([evaluation.distillation_report], resources=resources)
    md = report.get_asset_materialization_events()[0].materialization.metadata["report"].value
    assert "| copier (control) | 100% [" in md
    assert "| base + steering |" in md
