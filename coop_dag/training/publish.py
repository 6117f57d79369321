"""Publishing a trained adapter, whichever trainer made it: copied under its content-addressed
name into the adapters directory, loaded and probed on the serving engine against the base
model's probe, its ``lineage.json`` and ``probe.json`` written, and the facts and output the
``lora_checkpoint`` asset hands on assembled. No Dagster here: ``assets/training.py`` formats
the result as metadata and checks.

Serving and the lineage store's ``content_version`` are imported inside
:func:`publish_adapter` (``serving`` imports ``training`` lazily too, and importing this
module stays cheap).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coop_dag.training.adapters import adapter_name, write_lineage
from coop_dag.training.contract import TrainResult, copy_adapter

if TYPE_CHECKING:
    from coop_dag.serving.endpoints import Endpoint
    from coop_dag.serving.probe import ProbeResult


@dataclass
class PublishedAdapter:
    """A published adapter: where it is, its probes, and what the asset hands on."""

    name: str  # student-<sha12>
    adapter_dir: Path  # <adapters>/<variant>/<name>
    probe_base: ProbeResult
    probe_adapter: ProbeResult
    compare: dict[str, Any]  # compare_outputs(probe_base, probe_adapter)
    facts: dict[str, Any]  # upstream facts + probe facts + trainer, adapter and base names
    data_version: str  # content_version of (adapter name, upstream data version)
    trainer: str  # result.lineage["trainer"]
    output: dict[str, Any]  # the asset's output (see assets/training.py lora_checkpoint)


def publish_adapter(
    result: TrainResult,
    dest_for: Callable[[str], Path],
    *,
    student: Any,
    recipe: Any,
    upstream_version: str,
    facts: dict[str, Any],
    cases: list,
    endpoint: Endpoint,
    probe_base: ProbeResult,
    max_new_tokens: int,
    log: Callable[[str], None] | None = None,
) -> PublishedAdapter:
    """Copy ``result``'s adapter to ``dest_for(name)`` (``name``: ``student-<sha12>``), load it
    on ``endpoint`` and probe it on ``cases``, write its ``lineage.json`` (the run's lineage,
    the probe facts, its directory) and ``probe.json``, and return what the asset records and
    hands on. ``upstream_version``: the TITO parquet's data version."""
    from coop_dag.eval.lineage import content_version
    from coop_dag.serving.probe import compare_outputs, probe_endpoint
    from coop_dag.serving.swap import ensure_loaded

    name = adapter_name(result.adapter_dir)
    final = copy_adapter(result.adapter_dir, dest_for(name))
    ensure_loaded(endpoint.url, name, final)
    probe_adapter = probe_endpoint(
        endpoint.engine,
        name,
        cases,
        max_new_tokens=max_new_tokens,
        adapter=str(final),
        log=log,
    )
    compare = compare_outputs(probe_base, probe_adapter)
    probe_facts = _record_probes(final, result, probe_base, probe_adapter, compare)
    data_version = content_version({"adapter": name, "upstream": upstream_version})
    trainer = result.lineage.get("trainer", "unknown")
    all_facts = {
        **facts,
        **probe_facts,
        "trainer": trainer,
        "adapter_name": name,
        "base_model": student.name,
    }
    output = {
        "adapter_name": name,
        "adapter_dir": str(final),
        "base_model": student.name,
        "base_model_dir": str(student.model_dir),
        "student": student.name,
        "recipe": recipe.name,
        "data_version": data_version,
        "probe_base": probe_base.as_dict(),
        "probe_adapter": probe_adapter.as_dict(),
        "probe_compare": compare,
        "train": train_summary(result, final),
        "facts": all_facts,
    }
    return PublishedAdapter(
        name=name,
        adapter_dir=final,
        probe_base=probe_base,
        probe_adapter=probe_adapter,
        compare=compare,
        facts=all_facts,
        data_version=data_version,
        trainer=trainer,
        output=output,
    )


def _record_probes(
    final: Path,
    result: TrainResult,
    probe_base: ProbeResult,
    probe_adapter: ProbeResult,
    compare: dict[str, Any],
) -> dict[str, Any]:
    """Write the published adapter's ``lineage.json`` (the run's lineage, the probe facts, its
    directory) and ``probe.json`` (both probes and their comparison); the probe facts."""
    probe_facts = {
        "probe_base_rate": probe_base.rate,
        "probe_adapter_rate": probe_adapter.rate,
        "probe_n": probe_adapter.n,
        "probe_max_new_tokens": probe_adapter.max_new_tokens,
        "probe_differs": compare["differs"],
    }
    write_lineage(final, {**result.lineage, **probe_facts, "adapter_dir": str(final)})
    (final / "probe.json").write_text(
        json.dumps(
            {"base": probe_base.as_dict(), "adapter": probe_adapter.as_dict(), **compare},
            indent=1,
        )
    )
    return probe_facts


def train_summary(result: TrainResult, adapter_dir: Path) -> dict[str, Any]:
    """The training numbers the asset's output carries (``train``), with the loss-curve files
    of the published copy."""
    return {
        "steps": result.steps,
        "max_steps": result.max_steps,
        "epochs": result.epochs,
        "train_loss": result.train_loss,
        "initial_val_loss": result.initial_val_loss,
        "final_val_loss": result.final_val_loss,
        "tokens_seen": result.tokens_seen,
        "trained_tokens": result.trained_tokens,
        "train_time_s": result.train_time_s,
        "tokens_per_s": result.tokens_per_s,
        "trainable_params": result.trainable_params,
        "train_rows": result.train_rows,
        "val_rows": result.val_rows,
        "run_key": result.run_key,
        "resumed_from_step": result.resumed_from_step,
        "reused": result.reused,
        "loss_curve_png": str(adapter_dir / "loss_curve.png"),
        "loss_curve_json": str(adapter_dir / "loss_curve.json"),
    }
