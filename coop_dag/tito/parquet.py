"""TITO parquet files: the schema (``tito_schema``), the atomic writer (``write_parquet``) and
the one reader (``read_tito_parquet``); the build's metadata rides in the schema metadata as
JSON under ``coop_dag.tito`` (``METADATA_KEY``), tagged ``FORMAT_VERSION``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from coop_dag.util.files import atomic_write

FORMAT_VERSION = "coop-dag.tito/v1"
METADATA_KEY = b"coop_dag.tito"


def tito_schema(metadata: dict | None = None):
    """The TITO row schema, with ``metadata`` as JSON under ``METADATA_KEY`` when given."""
    import pyarrow as pa

    fields = [
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("output_ids", pa.list_(pa.int32())),
        pa.field("traj_id", pa.string()),
        pa.field("pair_id", pa.string()),
        pa.field("repo", pa.string()),
        pa.field("task_id", pa.string()),
        pa.field("agent_id", pa.string()),
        pa.field("turn_index", pa.int32()),
        pa.field("weight", pa.float32()),
        pa.field("upweight", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("loss_spans", pa.list_(pa.list_(pa.int32()))),
        pa.field("span_turns", pa.list_(pa.int32())),
        pa.field("span_actions", pa.list_(pa.int32())),
    ]
    meta = None
    if metadata is not None:
        meta = {METADATA_KEY: json.dumps(metadata, ensure_ascii=False, default=str).encode()}
    return pa.schema(fields, metadata=meta)


def write_parquet(rows: Sequence[dict], path: str | os.PathLike, metadata: dict) -> Path:
    """Write rows atomically (temp file in the same directory, then rename); ``metadata``
    goes into the schema metadata as JSON under ``coop_dag.tito``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = tito_schema(metadata)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_tito_parquet(path: str | os.PathLike):
    """``(pyarrow.Table, metadata dict)`` of a TITO parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return table, (json.loads(raw) if raw else {})
