"""What the verl tests train on, shared by tests/training/test_verl_training.py (a fake verl)
and tests/e2e/test_verl_real.py (real verl 0.9.1): the tiny student, its TITO parquet, and
``lora_checkpoint`` set up to train it.

Fixtures, imported into a test module under their function names (``from
tests.training.verl_fixtures import tiny_fixture, tito_fixture``) and requested by their
fixture names: ``tiny`` (tiny-qwen3, a random 2-layer Qwen3) and ``tito`` (``train.parquet``
and ``val.parquet`` with the importing module's ``TRAIN_ROWS`` / ``VAL_ROWS`` rows, from
tests/training/test_train.py's row helpers). Helpers: `tiny_variant` (variant ``templated``
pointed at tiny-qwen3 / tiny-test), `lora_assets` (a ``tito_parquet`` stand-in for a TITO dir
and ``lora_checkpoint``) and `lora_resources` (the asset's resources around a
`TrainingResource`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag.tito.parquet import write_parquet  # noqa: E402
from coop_dag.training.students import get_student  # noqa: E402
from tests.training.test_train import meta_for, rows_for  # noqa: E402  (TITO row helpers)

STUDENT = "tiny-qwen3"
RECIPE = "tiny-test"  # lora_r 4, lora_alpha 16, lr 2e-2, 2 epochs, 1 row per step
VARIANT = "templated"  # the variant partition the asset tests materialise


@pytest.fixture(scope="module", name="tiny")
def tiny_fixture():
    """The student every verl test trains: tiny-qwen3."""
    return get_student(STUDENT)


@pytest.fixture(scope="module", name="tito")
def tito_fixture(tmp_path_factory, tiny, request) -> Path:
    """A TITO dir for `tiny`: ``TRAIN_ROWS`` training and ``VAL_ROWS`` validation rows (the
    requesting test module's constants)."""
    tok = tiny.load_tokenizer()
    d = tmp_path_factory.mktemp("tito")
    write_parquet(rows_for(tok, request.module.TRAIN_ROWS), d / "train.parquet", meta_for(tiny))
    val = rows_for(tok, request.module.VAL_ROWS, seed=7)
    write_parquet(val, d / "val.parquet", meta_for(tiny))
    return d


def tiny_variant():
    """Variant `VARIANT`, training tiny-qwen3 with recipe tiny-test."""
    from assets import training as asset_module

    variant = asset_module.VARIANTS[VARIANT]
    return dataclasses.replace(variant, student=STUDENT, recipe=RECIPE)


def lora_assets(tito: Path) -> list:
    """A ``tito_parquet`` stand-in handing over the parquets in `tito`, and
    ``lora_checkpoint`` (set `tiny_variant` as variant `VARIANT` to train tiny-qwen3)."""
    import dagster as dg

    from assets import training as asset_module
    from assets.partitions import variant_partitions

    @dg.asset(partitions_def=variant_partitions, name="tito_parquet")
    def tito_parquet() -> dict:
        return {
            "train_path": str(tito / "train.parquet"),
            "val_path": str(tito / "val.parquet"),
            "metadata": meta_for(get_student(STUDENT)),
            "data_version": "tito-dv",
            "student": STUDENT,
        }

    return [tito_parquet, asset_module.lora_checkpoint]


def lora_resources(tmp_path: Path, training: Any, serving_url: str) -> dict:
    """``lora_checkpoint``'s resources: `training` (a `TrainingResource`), the vLLM server at
    `serving_url` for the probe, a lineage store in `tmp_path`."""
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.serving import ServingResource

    return {
        "dataset": DatasetResource(),
        "training": training,
        "serving": ServingResource(url=serving_url),
        "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
    }
