"""Adapters that land in the adapters directory -- dropped there by an external verl job
(with its `lineage.json`), or published by `lora_checkpoint` -- each served and evaluated in
its own partition of a dynamic partitions definition keyed by content name (`student-<sha12>`).
Their metrics trace to the adapter's own `lineage.json`, never to a variant's `lora_checkpoint`
that did not produce them. The variant named in the lineage supplies the held-out pairs and the
rollout settings, and the student unless the lineage names the one it was trained on."""

from pathlib import Path

import dagster as dg

from assets.evaluation import bar_check_specs, roll_out_adapter, score_rollouts
from assets.partitions import GPU_POOL, VARIANTS, dropped_adapter_partitions
from assets.serving import serve_and_check, served_check_spec
from coop_dag.training.adapters import (
    AdapterError,
    adapter_name,
    read_lineage,
    repair_adapter,
    validate_adapter,
)
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource
from resources.serving import ServingResource


class DroppedAdapterConfig(dg.Config):
    """Where the partition's adapter is (set by the new-adapter sensor). Empty: searched for
    by content name under the adapters directory."""

    adapter_dir: str = ""


def find_adapter(name: str, adapter_dir: str = "") -> Path:
    """The directory holding the adapter whose content name is `name`: `adapter_dir` when
    given (and it must hold those weights), else the first match under the adapters dir."""
    from assets.sensors import adapters_root, candidate_dirs

    candidates = [Path(adapter_dir)] if adapter_dir else candidate_dirs(adapters_root())
    for d in candidates:
        try:
            if adapter_name(d) == name:
                return d
        except AdapterError:
            continue
    where = adapter_dir or f"under {adapters_root()}"
    raise AdapterError(f"no adapter with weights {name} {where} (partition {name})")


@dg.asset(
    partitions_def=dropped_adapter_partitions,
    group_name="dropped_adapters",
    code_version="1",
    pool=GPU_POOL,
    check_specs=[served_check_spec("dropped_adapter", dropped_adapter_partitions)],
)
def dropped_adapter(
    context: dg.AssetExecutionContext,
    config: DroppedAdapterConfig,
    serving: ServingResource,
    lineage: LineageResource,
):
    """A landed adapter, repaired (verl's export quirks) and validated, served under its
    content name and probed against its variant's base student. Its facts are its own
    `lineage.json`'s (trainer, data version, teacher, ...)."""
    name = context.partition_key
    path = find_adapter(name, config.adapter_dir)
    for change in repair_adapter(path):
        context.log.info(f"repaired {path}: {change}")
    validate_adapter(path)
    facts = read_lineage(path)
    variant = VARIANTS.get(facts.get("variant"))
    if variant is None:
        raise dg.Failure(
            f"{path}/lineage.json names variant {facts.get('variant')!r}, not one of "
            f"{sorted(VARIANTS)}: the variant says which student serves it"
        )
    yield from serve_and_check(
        context,
        serving,
        lineage,
        variant=variant.name,
        student=facts.get("student") or variant.student,  # the student it was trained on
        adapter_dir=str(path),
        expected_name=name,
        base_model=facts.get("base_model"),
        upstream_facts={**facts, "variant": variant.name, "adapter_source": str(path)},
        upstream={"adapter_lineage": facts.get("tito_data_version") or facts.get("data_version")},
    )


@dg.asset(
    partitions_def=dropped_adapter_partitions,
    group_name="dropped_adapters",
    code_version="1",
    pool=GPU_POOL,
    check_specs=bar_check_specs("dropped_adapter_metrics", dropped_adapter_partitions),
)
def dropped_adapter_metrics(
    context: dg.AssetExecutionContext,
    task_pool: dict,
    dropped_adapter: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    serving: ServingResource,
    lineage: LineageResource,
):
    """The landed adapter on its variant's held-out pairs (the same runtime, prompt and limits
    as student_rollouts; rollouts shared with it for the same weights), the three metrics, the
    seed's bars as checks of this partition, and deltas over the variant's untrained base
    student when the lineage store has its latest metrics."""
    variant = VARIANTS[dropped_adapter["facts"]["variant"]]
    rolled, metadata = roll_out_adapter(
        context, variant, task_pool, dropped_adapter, dataset, rollout, serving
    )
    # the variant's untrained base as last recorded (its rates only: no paired interval)
    base = lineage.store.latest_metrics("base_student_metrics").get(variant.name) or {}
    yield from score_rollouts(
        context,
        rolled,
        lineage,
        base=None,
        # the rollouts are this step's own: their version stands beside the served adapter's
        upstream={
            "dropped_adapter": dropped_adapter["data_version"],
            "rollouts": rolled["data_version"],
        },
        base_rates=base,
        metadata=metadata,
    )
