"""The lineage store resource: where materialisations record what produced them."""

from pathlib import Path
from typing import Any

import dagster as dg

from coop_dag.eval.lineage import LineageStore, default_store_path


class LineageResource(dg.ConfigurableResource):
    """DuckDB lineage file. Empty `path`: $COOP_DAG_LINEAGE_DB or runs/lineage.duckdb."""

    path: str = ""

    @property
    def store(self) -> LineageStore:
        return LineageStore(Path(self.path) if self.path else default_store_path())

    def record(
        self,
        context: dg.AssetExecutionContext,
        data_version: str,
        *,
        upstream: dict[str, str] | None = None,
        facts: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        deltas: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        key = context.asset_key.to_user_string()
        variant = context.partition_key if context.has_partition_key else None
        self.store.record(
            key,
            variant,
            data_version,
            upstream=upstream,
            facts=facts,
            metrics=metrics,
            deltas=deltas,
            run_id=context.run.run_id,
        )
