"""A GPU step for tests/pipeline/test_gpu_pool.py: a variant-partitioned asset in the GPU pool (the
pool and partitions of the real GPU assets) that records when it held the pool. Run as
``python -m tests.gpu_pool_job <partition> <out_dir>`` against ``$DAGSTER_HOME``."""

import json
import sys
import time
from pathlib import Path

import dagster as dg

from assets.partitions import GPU_POOL, variant_partitions

HOLD_S = 10.0  # how long a step waits to see the other partition's step start
READY_S = 120.0  # how long it waits for the other process to be ready to launch its run
PARTITIONS = ("templated", "templated-up1")


class GpuStepConfig(dg.Config):
    out_dir: str


@dg.asset(partitions_def=variant_partitions, pool=GPU_POOL)
def gpu_step(context: dg.AssetExecutionContext, config: GpuStepConfig) -> None:
    out = Path(config.out_dir)
    me = context.partition_key
    start = time.time()
    (out / f"{me}.start").write_text(str(start))
    # Count the hold from the moment the other process is about to launch its run, not from
    # my start: on a loaded machine its imports alone can take longer than the hold.
    ready_by = start + READY_S
    while time.time() < ready_by and not all((out / f"{p}.ready").exists() for p in PARTITIONS):
        time.sleep(0.1)
    deadline = time.time() + HOLD_S
    saw_other = False
    while time.time() < deadline and not saw_other:  # would the other step run beside me?
        saw_other = any(  # another partition's step started and has not finished
            p.stem != me and not (out / f"{p.stem}.json").exists() for p in out.glob("*.start")
        )
        time.sleep(0.1)
    end = time.time()
    tmp = out / f".{me}.tmp"
    tmp.write_text(json.dumps({"start": start, "end": end, "saw": saw_other}))
    tmp.replace(out / f"{me}.json")  # atomically: the other step reads it as "finished"


def main(partition: str, out_dir: str) -> int:
    with dg.DagsterInstance.get() as instance:
        (Path(out_dir) / f"{partition}.ready").write_text("")
        result = dg.materialize(
            [gpu_step],
            partition_key=partition,
            instance=instance,
            run_config={"ops": {"gpu_step": {"config": {"out_dir": out_dir}}}},
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
