"""Where tasks come from: the bundled CooperBench-format dataset or a real `dataset/` checkout."""

import os
from pathlib import Path

import dagster as dg

from coop_dag import BUNDLED_DATASET
from coop_dag.tasks import DEFAULT_HELD_OUT


class DatasetResource(dg.ConfigurableResource):
    """Task source. Leave `dataset_dir` empty for the bundled dataset (embedded default).
    Environment fallbacks: COOP_DAG_DATASET, COOP_DAG_SUBSET, COOP_DAG_MIRROR_DIR,
    COOP_DAG_HELD_OUT (comma-separated repos)."""

    dataset_dir: str = ""
    subset: str = ""
    mirror_dir: str = ""  # local git mirrors for real CooperBench repos (offline clones)
    held_out_repos: list[str] = []  # empty: the bundled default, or COOP_DAG_HELD_OUT

    @property
    def root(self) -> Path:
        return Path(self.dataset_dir or os.environ.get("COOP_DAG_DATASET") or BUNDLED_DATASET)

    @property
    def subset_name(self) -> str | None:
        return self.subset or os.environ.get("COOP_DAG_SUBSET") or None

    @property
    def mirror(self) -> Path | None:
        value = self.mirror_dir or os.environ.get("COOP_DAG_MIRROR_DIR")
        return Path(value) if value else None

    @property
    def held_out(self) -> list[str]:
        if self.held_out_repos:
            return list(self.held_out_repos)
        env = os.environ.get("COOP_DAG_HELD_OUT", "")
        if env:
            return [r.strip() for r in env.split(",") if r.strip()]
        if self.root.resolve() == BUNDLED_DATASET.resolve():
            return list(DEFAULT_HELD_OUT)
        raise ValueError(
            f"dataset {self.root} is not the bundled one: set the dataset resource's "
            "held_out_repos (or COOP_DAG_HELD_OUT) to the repositories to hold out"
        )
