"""Controls for the student's numbers, each a real policy run through the same runtime (the
variant's held-out limits, no steering unless stated) on the same test pairs:

- ``control_copier_metrics``: a scripted copier (``agent.teachers.CopierPolicy``) that sends
  the partner the feature's Files Modified list, greps those files and submits -- no model. A
  metric it clears is "copyable" in the report: a student scoring there shows no more than
  copying the task text does.
- ``base_steering_metrics``: the untrained base *with* the steering prompt, served like the
  student. Does the prompt alone buy the behaviour, without any training?
"""

import dagster as dg

from assets.evaluation import _held_out, _roll_out, roll_out_base, scored_output
from assets.partitions import VARIANTS, variant_partitions
from assets.rollout_assets import RolloutResources, rollout_asset
from coop_dag.agent.rollouts import select_pairs
from coop_dag.agent.teachers import copier_factory
from coop_dag.training.students import get_student
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource


@dg.asset(partitions_def=variant_partitions, group_name="evaluation", code_version="1")
def control_copier_metrics(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    lineage: LineageResource,
) -> dg.Output[dict]:
    """The copier control on the held-out pairs: Files Modified list sent (``--wait``), those
    files grepped, submitted without an edit. What it scores needs no planning at all."""
    variant = VARIANTS[context.partition_key]
    pairs = select_pairs(dataset.root, _held_out(task_pool), dataset.subset_name)
    run_dir = rollout.run_dir(variant.name, "copier")
    summary = _roll_out(
        context, copier_factory(), pairs, run_dir, variant, rollout, dataset, "copier"
    )
    facts = {
        "control": "copier",
        "policy": "send Files Modified list, grep it, submit (no model)",
        "held_out_repos": task_pool["test_repos"],
    }
    return scored_output(context, summary, lineage, facts, run_dir)


@rollout_asset(group_name="evaluation", code_version="1")
def base_steering_metrics(
    context: dg.AssetExecutionContext, task_pool: dict, resources: RolloutResources
) -> dg.Output[dict]:
    """The untrained base student given the steering prompt (the teacher's plan-first protocol
    section) on the held-out pairs: how much of the behaviour a prompt buys without training.
    Rollouts are kept per student, like the base's."""
    variant = VARIANTS[context.partition_key]
    summary, _, endpoint, run_dir = roll_out_base(
        context, task_pool, resources, subdir="base-steering", steering=True
    )
    facts = {
        "control": "base+steering",
        "student": variant.student,
        "base_model": endpoint.base_model_id,
        "steering": True,
        "held_out_repos": task_pool["test_repos"],
        "endpoint": endpoint.url,
        **get_student(variant.student).describe(),
    }
    return scored_output(context, summary, resources.lineage, facts, run_dir)
