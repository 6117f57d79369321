"""The variant partitions, built from configs/variants.yaml."""

import dagster as dg

from coop_dag.variants import default_variant_name, load_variants

VARIANTS = load_variants()
DEFAULT_VARIANT = default_variant_name()
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))

# Every asset that holds a GPU on the cluster runs in this Dagster concurrency pool:
# lora_checkpoint (verl training, then the probe on vLLM), served_adapter, student_rollouts,
# base_student_metrics and teacher_rollouts (a `served` teacher) -- all start or use a vLLM
# server through ServingResource.ensure. deploy/dagster.yaml limits every pool to 1 slot at
# op granularity, so two partitions' GPU steps never share the GPUs. (Scoring, TITO and the
# report do not join the pool: they run beside a GPU step.)
GPU_POOL = "gpu"
