"""The variant partitions, built from configs/variants.yaml."""

import dagster as dg

from coop_dag.variants import default_variant_name, load_variants

VARIANTS = load_variants()
DEFAULT_VARIANT = default_variant_name()
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
