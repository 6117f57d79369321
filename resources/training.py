"""Where the embedded trainer works and where finished adapters land, and the probe's size."""

import os
from pathlib import Path

import dagster as dg

from coop_dag.profiles import resolve_profile


class TrainingResource(dg.ConfigurableResource):
    """Embedded CPU LoRA training settings.

    - ``adapters_dir``: finished adapters, ``<adapters_dir>/<variant>/student-<sha12>/``
      (empty: ``$COOP_DAG_ADAPTERS_DIR`` or ``<repo>/runs/adapters``); the directory the
      new-adapter sensor watches, so only complete adapters ever appear there.
    - ``work_dir``: checkpoints and prepared rows, ``<work_dir>/<variant>/<run_key>/`` (empty:
      ``$COOP_DAG_TRAIN_DIR`` or ``<repo>/runs/train``); a rerun resumes from here.
    - ``recipe``: override the variant's recipe name (empty: the variant's).
    - ``force``: retrain even when the same run (student, data, recipe) already finished.
    - probe: ``probe_prompts`` held-out first turns, ``probe_max_new_tokens`` each,
      ``probe_batch_size`` prompts per left-padded generate call (8: ~2x faster on CPU than
      one by one, same hits on the measured adapter; 1: exact greedy per prompt).
    - ``threads``: torch threads (0: the cores no other process is using).
    """

    adapters_dir: str = ""
    work_dir: str = ""
    recipe: str = ""
    force: bool = False
    probe_prompts: int = 8
    probe_max_new_tokens: int = 160
    probe_batch_size: int = 8
    threads: int = 0

    @property
    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else resolve_profile().adapters_dir

    @property
    def work_root(self) -> Path:
        value = self.work_dir or os.environ.get("COOP_DAG_TRAIN_DIR")
        return Path(value) if value else resolve_profile().runs_dir / "train"

    def adapter_dir(self, variant: str, name: str) -> Path:
        return self.adapters_root / variant / name

    def run_root(self, variant: str) -> Path:
        return self.work_root / variant
