"""The main job: materialise the whole asset graph for one variant on the embedded default and
print a summary. `make demo` runs this; runs land in $DAGSTER_HOME (default ./.dagster_home)
so `dagster dev` shows them afterwards.

    python -m assets.demo [--variant NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DAGSTER_HOME", str(Path.cwd() / ".dagster_home"))
_home = Path(os.environ["DAGSTER_HOME"])
_home.mkdir(parents=True, exist_ok=True)
if not (_home / "dagster.yaml").exists():
    (_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

import dagster as dg  # noqa: E402

from assets.partitions import DEFAULT_VARIANT, VARIANTS, variant_partitions  # noqa: E402


def _report(result: dg.ExecuteInProcessResult) -> str | None:
    """The distillation report's markdown, when this run materialised it."""
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key == dg.AssetKey("distillation_report") and "report" in mat.metadata:
            return str(mat.metadata["report"].value)
    return None


def _summarise(result: dg.ExecuteInProcessResult) -> list[str]:
    lines = []
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        shown = {
            k: v.value
            for k, v in mat.metadata.items()
            if isinstance(v.value, int | float | str) and len(str(v.value)) < 80
        }
        part = f" [{mat.partition}]" if mat.partition else ""
        lines.append(f"  {mat.asset_key.to_user_string()}{part}")
        lines.extend(f"      {k}: {v}" for k, v in shown.items())
    for check in result.get_asset_check_evaluations():
        verdict = "passed" if check.passed else f"FAILED ({check.severity.value})"
        lines.append(f"  check {check.asset_key.to_user_string()}.{check.check_name}: {verdict}")
    return lines


def demo_steps(graph, variant: str) -> list[tuple[list[dg.AssetKey], str | None]]:
    """The main job as runs: the unpartitioned assets upstream of the variant chain (task_pool),
    the variant's partition of every variant-partitioned asset, then the unpartitioned assets
    downstream (the report). Assets partitioned otherwise (the dropped adapters' dynamic
    partitions) are the new-adapter sensor's, not the main job's."""
    keys = graph.get_all_asset_keys()
    chain = {k for k in keys if graph.get(k).partitions_def == variant_partitions}
    other = {k for k in keys - chain if graph.get(k).partitions_def is not None}
    plain = keys - chain - other
    after = {k for k in plain if graph.get_ancestor_asset_keys(k) & chain}
    steps = [(plain - after, None), (chain, variant), (after, None)]
    return [(sorted(step), partition) for step, partition in steps if step]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    args = parser.parse_args(argv)

    from definitions import defs

    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    steps = demo_steps(defs.resolve_asset_graph(), args.variant)
    instance = dg.DagsterInstance.get()
    started = time.time()
    summary: list[str] = []
    report = None
    for step, partition in steps:
        result = dg.materialize(
            assets,
            selection=list(step),
            partition_key=partition,
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
        summary += _summarise(result)
        report = _report(result) or report
        if not result.success:
            print("\n".join(summary))
            print(f"coop-dag demo: FAILED (variant {args.variant}); see `make ui` for the run log")
            return 1
    print("\n".join(summary))
    if report:
        print("\n" + report)
    print(f"\ncoop-dag demo: variant {args.variant}, {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
