"""A GPU step for tests/pipeline/test_gpu_pool.py: a variant-partitioned asset in the GPU pool (the
pool and partitions of the real GPU assets) that records when it held the pool. Run as
``python -m tests.gpu_pool_job <partition> <out_dir>`` against ``$DAGSTER_HOME``."""

import json
import sys
import time
from pathlib import Path

import dagster as dg

from assets.partitions import GPU_POOL, variant_partitions

WAIT_S = 150.0  # the longest a step waits to learn whether the other step would run beside it
BLOCKED_S = 2.0  # how long the other step must sit unassigned in the pool to count as blocked
PARTITIONS = ("templated", "templated-up1")


class GpuStepConfig(dg.Config):
    out_dir: str


def _other_blocked(context: dg.AssetExecutionContext) -> bool:
    """Another run's step waits in the GPU pool without a slot (so it cannot start now)."""
    info = context.instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return any(
        step.run_id != context.run.run_id and step.assigned_timestamp is None
        for step in info.pending_steps
    )


@dg.asset(partitions_def=variant_partitions, pool=GPU_POOL)
def gpu_step(context: dg.AssetExecutionContext, config: GpuStepConfig) -> None:
    """Hold the pool until the other partition's step either starts beside this one (the
    pool let it in), has already finished, or has waited in the pool without a slot for
    BLOCKED_S. Waiting on these events, not for a fixed time, keeps the test right on a
    loaded machine, where the other process's start-up alone can take many seconds."""
    out = Path(config.out_dir)
    me = context.partition_key
    other = next(p for p in PARTITIONS if p != me)
    start = time.time()
    (out / f"{me}.start").write_text(str(start))
    saw_other, blocked_at = False, None
    while time.time() < start + WAIT_S:
        # the other step started and has not finished: it runs beside me
        saw_other = (out / f"{other}.start").exists() and not (out / f"{other}.json").exists()
        if saw_other or (out / f"{other}.json").exists():
            break
        if not _other_blocked(context):
            blocked_at = None
        elif blocked_at is None:
            blocked_at = time.time()
        elif time.time() - blocked_at >= BLOCKED_S:
            break
        time.sleep(0.1)
    end = time.time()
    tmp = out / f".{me}.tmp"
    tmp.write_text(json.dumps({"start": start, "end": end, "saw": saw_other}))
    tmp.replace(out / f"{me}.json")  # atomically: the other step reads it as "finished"


def main(partition: str, out_dir: str) -> int:
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [gpu_step],
            partition_key=partition,
            instance=instance,
            run_config={"ops": {"gpu_step": {"config": {"out_dir": out_dir}}}},
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
