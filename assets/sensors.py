"""The new-adapter sensor: an adapter that lands in the adapters directory -- trained by this
graph or dropped there by an external verl job with its `lineage.json` -- gets its own
partition of `dropped_adapter` / `dropped_adapter_metrics`, keyed by its content name
(`student-<sha12>`), and one run that serves and evaluates it. A variant's `served_adapter`
chain is never touched, so its metrics keep tracing to the `lora_checkpoint` that produced
them. Once per adapter (run key = content hash); a malformed drop is logged and skipped."""

import json
from pathlib import Path

import dagster as dg

from assets.partitions import VARIANTS, dropped_adapter_partitions
from coop_dag.config.profiles import resolve_profile
from coop_dag.training.adapters import (
    NAME_PREFIX,
    AdapterError,
    adapter_sha12,
    read_lineage,
    validate_adapter,
)

# task_pool runs in the same run, so the pairs come from this run's dataset resource (the
# dataset, subset and split it is configured with), never from an older materialisation.
EVALUATED_ASSETS = ["task_pool", "dropped_adapter", "dropped_adapter_metrics"]

evaluate_adapter_job = dg.define_asset_job(
    "evaluate_adapter",
    selection=EVALUATED_ASSETS,
    description=(
        "Serve an adapter in its own partition and evaluate it on the test split of the run's "
        "dataset; no lora_checkpoint is needed. The partition is the adapter's content name "
        "(student-<sha12>): the new-adapter sensor adds it for adapters under the adapters "
        "directory; for any other directory `python -m assets.register_adapter DIR` adds it "
        "and prints the command to run (ops.dropped_adapter.config.adapter_dir = DIR). The "
        "variant in the adapter's lineage.json fixes the base student and the rollout limits."
    ),
)


def adapters_root() -> Path:
    return resolve_profile().adapters_dir


def candidate_dirs(root: Path) -> list[Path]:
    """Directories under `root` (any depth up to 3) holding an adapter_config.json."""
    if not root.is_dir():
        return []
    found = {
        p.parent
        for depth in ("*", "*/*", "*/*/*")
        for p in root.glob(f"{depth}/adapter_config.json")
    }
    return sorted(d for d in found if not any(part.startswith(".") for part in d.parts))


def check_drop(adapter_dir: Path) -> tuple[str, str]:
    """A dropped adapter's content hash and the variant its lineage.json names; AdapterError
    when it is not servable or names no known variant."""
    validate_adapter(adapter_dir)
    sha = adapter_sha12(adapter_dir)
    variant = read_lineage(adapter_dir).get("variant")
    if variant not in VARIANTS:
        raise AdapterError(
            f"{adapter_dir}/lineage.json names variant {variant!r}, not one of {sorted(VARIANTS)}"
        )
    return sha, variant


def scan(root: Path, seen: set[str], log) -> list[dg.RunRequest]:
    """Run requests for adapters not in `seen` (content hashes); updates `seen`. Each targets
    the partition named by the adapter's content name."""
    requests = []
    for adapter_dir in candidate_dirs(root):
        try:
            sha, variant = check_drop(adapter_dir)
        except (AdapterError, OSError, ValueError, KeyError) as err:
            log.warning(f"skipping malformed adapter drop {adapter_dir}: {err}")
            continue
        if sha in seen:
            continue
        seen.add(sha)
        name = f"{NAME_PREFIX}{sha}"
        requests.append(
            dg.RunRequest(
                run_key=f"adapter-{sha}",
                partition_key=name,
                run_config={
                    "ops": {"dropped_adapter": {"config": {"adapter_dir": str(adapter_dir)}}}
                },
                tags={
                    "coop_dag/adapter": name,
                    "coop_dag/adapter_dir": str(adapter_dir),
                    "coop_dag/variant": variant,
                },
            )
        )
    return requests


@dg.sensor(job=evaluate_adapter_job, minimum_interval_seconds=30)
def new_adapter_sensor(context: dg.SensorEvaluationContext):
    """Watches $COOP_DAG_ADAPTERS_DIR (default runs/adapters) for new adapters; adds each one's
    partition before requesting its run."""
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    requests = scan(adapters_root(), seen, context.log)
    context.update_cursor(json.dumps(sorted(seen)))
    if not requests:
        return dg.SkipReason(f"no new adapter under {adapters_root()}")
    known = set(context.instance.get_dynamic_partitions(dropped_adapter_partitions.name))
    new = sorted({r.partition_key for r in requests} - known)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[dropped_adapter_partitions.build_add_request(new)]
        if new
        else [],
    )
