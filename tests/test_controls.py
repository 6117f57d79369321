"""The copier control through the real runtime: two agents in bubblewrap sandboxes, messaging
through a real Redis-protocol server, the task's tests run, then scored by coop_dag.metrics.
It pastes the Files Modified list, greps it and submits -- and still clears plan_first,
plan_content and follow_through (so the report marks them "copyable"), while it never edits."""

from __future__ import annotations

import json
from pathlib import Path

from coop_dag import BUNDLED_DATASET
from coop_dag.episode import pair_dir
from coop_dag.metrics import score_run
from coop_dag.rollouts import limits_from, raise_on_errors, rollout_pairs
from coop_dag.tasks import discover_pairs
from coop_dag.teachers import CopierPolicy, copier_factory

try:
    from test_agent import needs_bwrap
except ImportError:  # tests/ imported as a package
    from tests.test_agent import needs_bwrap

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
