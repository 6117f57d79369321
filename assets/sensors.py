"""The new-adapter sensor: an adapter that lands in the adapters directory — trained by this
graph or dropped there by an external verl job with its `lineage.json` — is imported, served
and evaluated for its variant, once per adapter (run key = its content hash). A malformed drop
is logged and skipped."""

import json
from pathlib import Path

import dagster as dg

from assets.partitions import VARIANTS
from coop_dag.adapters import AdapterError, adapter_sha12, read_lineage, validate_adapter
from coop_dag.profiles import resolve_profile

# task_pool runs in the same run, so the pairs come from this run's dataset resource (the
# dataset, subset and split it is configured with), never from an older materialisation.
EVALUATED_ASSETS = [
    "task_pool",
    "served_adapter",
    "base_student_metrics",
    "student_rollouts",
    "behaviour_metrics",
]

evaluate_adapter_job = dg.define_asset_job(
    "evaluate_adapter",
    selection=EVALUATED_ASSETS,
    description=(
        "Serve an adapter and evaluate it on the test split of the run's dataset: set "
        "ops.served_adapter.config.adapter_dir (no lora_checkpoint needed). The partition is "
        "the variant whose student the adapter was trained on (its lineage.json 'variant'; "
        "the sensor picks it): it fixes the base student and the held-out rollout limits. "
        "From the CLI: dagster job execute -m definitions -j evaluate_adapter --tags "
        '\'{"dagster/partition": "<variant>"}\' -c run_config.yaml; in the UI, the '
        "launchpad's partition picker."
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


def scan(root: Path, seen: set[str], log) -> list[dg.RunRequest]:
    """Run requests for adapters not in `seen` (content hashes); updates `seen`."""
    requests = []
    for adapter_dir in candidate_dirs(root):
        try:
            validate_adapter(adapter_dir)
            sha = adapter_sha12(adapter_dir)
            lineage = read_lineage(adapter_dir)
            variant = lineage.get("variant")
            if variant not in VARIANTS:
                raise AdapterError(
                    f"lineage.json names variant {variant!r}, not one of {sorted(VARIANTS)}"
                )
        except (AdapterError, OSError, ValueError, KeyError) as err:
            log.warning(f"skipping malformed adapter drop {adapter_dir}: {err}")
            continue
        if sha in seen:
            continue
        seen.add(sha)
        requests.append(
            dg.RunRequest(
                run_key=f"adapter-{sha}",
                partition_key=variant,
                run_config={
                    "ops": {"served_adapter": {"config": {"adapter_dir": str(adapter_dir)}}}
                },
                tags={
                    "coop_dag/adapter": f"student-{sha}",
                    "coop_dag/adapter_dir": str(adapter_dir),
                },
            )
        )
    return requests


@dg.sensor(job=evaluate_adapter_job, minimum_interval_seconds=30)
def new_adapter_sensor(context: dg.SensorEvaluationContext):
    """Watches $COOP_DAG_ADAPTERS_DIR (default runs/adapters) for new adapters."""
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    requests = scan(adapters_root(), seen, context.log)
    context.update_cursor(json.dumps(sorted(seen)))
    if not requests:
        return dg.SkipReason(f"no new adapter under {adapters_root()}")
    return requests
