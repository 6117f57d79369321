"""Where tasks come from: the bundled CooperBench-format dataset or a real `dataset/` checkout."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from coop_dag import BUNDLED_DATASET
from coop_dag.tasks import DEFAULT_HELD_OUT


class DatasetResource(dg.ConfigurableResource):
    """Task source. Leave `dataset_dir` empty for the bundled dataset (embedded default)."""

    dataset_dir: str = ""
    subset: str = ""
    mirror_dir: str = ""  # local git mirrors for real CooperBench repos (offline clones)
    held_out_repos: list[str] = list(DEFAULT_HELD_OUT)

    @property
    def root(self) -> Path:
        return Path(self.dataset_dir or os.environ.get("COOP_DAG_DATASET") or BUNDLED_DATASET)

    @property
    def mirror(self) -> Path | None:
        value = self.mirror_dir or os.environ.get("COOP_DAG_MIRROR_DIR")
        return Path(value) if value else None
