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

from assets.evaluation import _held_out, _metric_metadata, _roll_out
from assets.partitions import GPU_POOL, VARIANTS, variant_partitions
from assets.teacher import score_pair_ids
from coop_dag.agent.rollouts import select_pairs
from coop_dag.agent.teachers import copier_factory
from coop_dag.eval.lineage import content_version
from coop_dag.training.students import get_student
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource
from resources.serving import ServingResource


def _scored(context, summary: dict, lineage: LineageResource, facts: dict, run_dir) -> dg.Output:
    """Score the control's rollouts, record them in the lineage store, output with metadata."""
    metrics = score_pair_ids(summary["run_dir"], summary["pair_ids"], warn=context.log.warning)
    metrics["data_version"] = content_version(metrics["per_pair"])
    lineage.record(context, metrics["data_version"], facts=facts, metrics=metrics["summary"])
    return dg.Output(
        metrics,
        data_version=dg.DataVersion(metrics["data_version"]),
        metadata={
            **_metric_metadata(metrics["summary"]),
            "run_dir": dg.MetadataValue.path(str(run_dir)),
        },
    )


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
    return _scored(context, summary, lineage, facts, run_dir)


@dg.asset(
    partitions_def=variant_partitions, group_name="evaluation", code_version="1", pool=GPU_POOL
)
def base_steering_metrics(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    serving: ServingResource,
    lineage: LineageResource,
) -> dg.Output[dict]:
    """The untrained base student given the steering prompt (the teacher's plan-first protocol
    section) on the held-out pairs: how much of the behaviour a prompt buys without training.
    Rollouts are kept per student, like the base's."""
    variant = VARIANTS[context.partition_key]
    endpoint = serving.ensure(variant.student, log=context.log.info)
    pairs = select_pairs(dataset.root, _held_out(task_pool), dataset.subset_name)
    run_dir = rollout.root / "base-steering" / variant.student
    model = endpoint.chat_model(
        endpoint.base_model_id, max_tokens=int(variant.student_rollout.get("max_tokens", 320))
    )
    summary = _roll_out(
        context, model, pairs, run_dir, variant, rollout, dataset, endpoint.base_model_id,
        steering=True,
    )  # fmt: skip
    facts = {
        "control": "base+steering",
        "student": variant.student,
        "base_model": endpoint.base_model_id,
        "steering": True,
        "held_out_repos": task_pool["test_repos"],
        "endpoint": endpoint.url,
        **get_student(variant.student).describe(),
    }
    return _scored(context, summary, lineage, facts, run_dir)
