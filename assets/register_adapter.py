"""``python -m assets.register_adapter DIR``: make an adapter directory evaluable by the
``evaluate_adapter`` job without the sensor -- check it as the sensor would, add its partition
(its content name) to ``$DAGSTER_HOME``'s instance, write the run config naming the directory
(``$DAGSTER_HOME/evaluate_adapter/<name>.yaml``) and print the command that runs the job on it.
Adapters under the adapters directory need none of this: the sensor does it."""

import argparse
import json
import sys
from pathlib import Path

import dagster as dg

from assets.partitions import dropped_adapter_partitions
from assets.sensors import check_drop
from coop_dag.training.adapters import NAME_PREFIX, AdapterError


def register(adapter_dir: Path, instance: dg.DagsterInstance) -> str:
    """The adapter's partition name, added to `instance` if it was not there."""
    sha, _ = check_drop(adapter_dir)
    name = f"{NAME_PREFIX}{sha}"
    if not instance.has_dynamic_partition(dropped_adapter_partitions.name, name):
        instance.add_dynamic_partitions(dropped_adapter_partitions.name, [name])
    return name


def write_run_config(name: str, adapter_dir: Path, instance: dg.DagsterInstance) -> Path:
    """The run config that points `dropped_adapter` at `adapter_dir` (JSON is YAML)."""
    config = {"ops": {"dropped_adapter": {"config": {"adapter_dir": str(adapter_dir)}}}}
    path = Path(instance.root_directory) / "evaluate_adapter" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def job_command(name: str, config: Path) -> str:
    return (
        "dagster job execute -m definitions -j evaluate_adapter "
        f"--tags '{json.dumps({'dagster/partition': name})}' -c {config}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assets.register_adapter", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("adapter_dir", type=Path, help="a PEFT adapter with its lineage.json")
    args = parser.parse_args(argv)
    path = args.adapter_dir.resolve()
    try:
        with dg.DagsterInstance.get() as instance:
            name = register(path, instance)
            config = write_run_config(name, path, instance)
    except (AdapterError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"partition {name} of {dropped_adapter_partitions.name}; run it with:")
    print(job_command(name, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
