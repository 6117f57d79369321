"""The main job's runs (`python -m assets.demo`, `make demo`): each step must resolve as one
Dagster job -- the dropped adapters' dynamic partitions once broke the whole demo at start."""

import dagster as dg

from assets.demo import demo_steps
from assets.partitions import DEFAULT_VARIANT


def test_each_demo_step_resolves_as_a_job_and_covers_the_variant_graph():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    steps = demo_steps(graph, DEFAULT_VARIANT)
    names = [{k.to_user_string() for k in step} for step, _ in steps]
    assert [p for _, p in steps] == [None, DEFAULT_VARIANT, None]
    assert "task_pool" in names[0] and "distillation_report" in names[2]
    assert {"teacher_rollouts", "lora_checkpoint", "student_rollouts", "behaviour_metrics",
            "base_steering_metrics", "control_copier_metrics"} <= names[1]  # fmt: skip
    covered = set().union(*names)
    assert {"dropped_adapter", "dropped_adapter_metrics"}.isdisjoint(covered)  # the sensor's
    assert covered == {k.to_user_string() for k in graph.get_all_asset_keys()} - {
        "dropped_adapter",
        "dropped_adapter_metrics",
    }
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    for i, (step, _) in enumerate(steps):
        job = dg.define_asset_job(f"demo_step_{i}", selection=step)
        dg.Definitions(assets=assets, jobs=[job], resources=defs.resources).resolve_job_def(
            f"demo_step_{i}"
        )
