"""The variant partitions, built from configs/variants.yaml; the dropped-adapter partitions; the
GPU pool; partitioned asset checks."""

import warnings

import dagster as dg

from coop_dag.config.variants import default_variant_name, load_variants

VARIANTS = load_variants()
DEFAULT_VARIANT = default_variant_name()
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))

# Every asset that holds a GPU on the cluster runs in this Dagster concurrency pool:
# lora_checkpoint (verl training, then the probe on vLLM), served_adapter, student_rollouts,
# base_student_metrics, base_steering_metrics, teacher_rollouts (a `served` teacher) and the
# dropped-adapter assets -- all start or use a vLLM
# server through ServingResource.ensure. deploy/dagster.yaml limits every pool to 1 slot at
# op granularity, so two partitions' GPU steps never share the GPUs. (Scoring, TITO and the
# report do not join the pool: they run beside a GPU step.)
GPU_POOL = "gpu"

# One partition per adapter that lands in the adapters directory, keyed by its content name
# (`student-<sha12>`), added by the new-adapter sensor: a dropped adapter's serving and
# metrics have their own lineage and never overwrite a variant's served_adapter chain.
DROPPED_ADAPTERS = "dropped_adapters"
dropped_adapter_partitions = dg.DynamicPartitionsDefinition(name=DROPPED_ADAPTERS)


def check_spec(
    name: str,
    asset: str,
    partitions_def: dg.PartitionsDefinition = variant_partitions,
    **kwargs,
) -> dg.AssetCheckSpec:
    """An asset check partitioned like its asset: a result belongs to the partition (variant,
    adapter) it was evaluated on, so one variant's failure never shows on another."""
    with warnings.catch_warnings():  # partitioned checks are "preview" in Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, **kwargs)
