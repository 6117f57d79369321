"""The one signature of the assets that serve a model and roll it out on a variant's pairs
(`teacher_rollouts`, `base_student_metrics`, `base_steering_metrics`): partitioned by variant,
in the GPU pool, given the task pool and the dataset, rollout, serving and lineage resources.

Dagster hands an asset its resources through the parameters of its function, so the assets
sharing those parameters share the function that declares them: `rollout_asset` wraps a body
taking ``(context, task_pool, resources)`` in an asset whose function has the full signature
(what Dagster reads: the `task_pool` input and the four resource keys), and names it and
describes it after the body.
"""

from collections.abc import Callable
from typing import NamedTuple

import dagster as dg

from assets.partitions import GPU_POOL, variant_partitions
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource
from resources.serving import ServingResource


class RolloutResources(NamedTuple):
    """The resources a rollout asset is given, in its signature's order."""

    dataset: DatasetResource
    rollout: RolloutResource
    serving: ServingResource
    lineage: LineageResource


RolloutBody = Callable[[dg.AssetExecutionContext, dict, RolloutResources], dg.Output[dict]]


def rollout_asset(
    *, group_name: str, code_version: str
) -> Callable[[RolloutBody], dg.AssetsDefinition]:
    """Decorator: `body` as a variant-partitioned asset in the GPU pool, named after it and
    described by its docstring, with `group_name` and `code_version`."""

    def wrap(body: RolloutBody) -> dg.AssetsDefinition:
        def compute(
            context: dg.AssetExecutionContext,
            task_pool: dict,
            dataset: DatasetResource,
            rollout: RolloutResource,
            serving: ServingResource,
            lineage: LineageResource,
        ) -> dg.Output[dict]:
            return body(context, task_pool, RolloutResources(dataset, rollout, serving, lineage))

        compute.__name__ = compute.__qualname__ = body.__name__
        compute.__doc__ = body.__doc__  # Dagster's description of the asset
        return dg.asset(
            name=body.__name__,
            partitions_def=variant_partitions,
            group_name=group_name,
            code_version=code_version,
            pool=GPU_POOL,
        )(compute)

    return wrap
