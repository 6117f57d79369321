"""`coop-dag` command line: inspect tasks and score CooperBench-layout run directories."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from coop_dag import BUNDLED_DATASET
    from coop_dag.tasks import DEFAULT_HELD_OUT, task_pool_summary

    held = args.held_out.split(",") if args.held_out else list(DEFAULT_HELD_OUT)
    summary = task_pool_summary(Path(args.dataset or BUNDLED_DATASET), held, args.subset)
    for pair in summary["pairs"]:
        files = ", ".join(pair["files_a"] + pair["files_b"])
        print(f"{pair['pair_id']:<40} {pair['split']:<9} {files}")
    print(f"{len(summary['pairs'])} pairs; held out: {', '.join(summary['held_out_repos'])}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from coop_dag.metrics import main_score

    main_score(
        Path(args.run_dir),
        Path(args.out) if args.out else None,
        rules=args.rules,
        dataset=Path(args.dataset) if args.dataset else None,
    )
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from coop_dag.lineage import LineageStore, default_store_path, format_chain

    store = LineageStore(Path(args.db) if args.db else default_store_path())
    print(format_chain(store.metric(args.metric, args.variant, args.asset)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import shlex

    from coop_dag.profiles import resolve_profile
    from coop_dag.students import get_student
    from coop_dag.vllm import (
        DEFAULT_MAX_MODEL_LEN,
        EVAL_DTYPE,
        VllmLauncher,
        VllmServeConfig,
        serve_command,
    )

    student = get_student(args.student)
    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r}: expected NAME=DIR")
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--adapter {item!r}: {path}/adapter_config.json not found")
        adapters[name] = str(Path(path).resolve())
    profile = resolve_profile().server
    python = args.vllm_python or profile.vllm_python
    if not python:
        raise ValueError("no vLLM python: pass --vllm-python or set COOP_DAG_VLLM_PYTHON")
    if not Path(python).exists():
        raise FileNotFoundError(
            f"vLLM's python {python} does not exist: run `bash scripts/vllm_venv.sh`"
        )
    config = VllmServeConfig(
        model=str(student.model_dir),
        host=args.host,
        port=args.port,
        served_model_name=student.name,
        max_model_len=DEFAULT_MAX_MODEL_LEN,
        lora_modules=adapters,
        dtype=args.dtype or EVAL_DTYPE,
        device=args.device or profile.device,
    )
    command = serve_command(config, VllmLauncher(python=python))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **command.env}
    if args.print_command:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(command.env.items()))
        print(f"{exports} {shlex.join(command.argv)}")
        return 0
    print(f"coop-dag serve: {student.name} on http://{args.host}:{args.port}", file=sys.stderr)
    os.execve(command.argv[0], list(command.argv), env)  # the command's lifetime is vLLM's
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coop-dag",
        description="Plan-first coop distillation (TITO): tasks, scoring and tools. "
        "The pipeline itself runs as Dagster assets (`make demo`, `dagster dev`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve",
        help="serve a student with vLLM (runtime LoRA, tool-call parser, token ids), in the "
        "foreground until interrupted",
    )
    p.add_argument("--student", help="a student of configs/students.yaml (default: its default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a LoRA adapter to serve at start-up (repeatable); more load at runtime through "
        "POST /v1/load_lora_adapter",
    )
    p.add_argument("--device", choices=("cpu", "gpu"), help="default: the profile's")
    p.add_argument("--dtype", help="vLLM --dtype (default: the evaluation protocol's)")
    p.add_argument("--vllm-python", help="vLLM's python (default: the profile's)")
    p.add_argument(
        "--print-command", action="store_true", help="print the command and exit, start nothing"
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("tasks", help="list feature pairs and their train/held-out split")
    p.add_argument("--dataset", help="CooperBench dataset dir (default: bundled)")
    p.add_argument("--subset", help="subset name under <dataset>/subsets/")
    p.add_argument("--held-out", help="comma-separated held-out repos")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser(
        "score",
        help="score a CooperBench-layout run dir: plan_first, plan_content, follow_through, "
        "edit_follow_through (+ both_passed, merge_clean from eval.json)",
    )
    p.add_argument("run_dir", help="directory containing coop/<repo>/<task>/f<a>_f<b>/")
    p.add_argument("--out", help="write the full metrics JSON here")
    p.add_argument(
        "--rules",
        choices=("s6", "seed-v5"),
        default="s6",
        help="s6: the seed report's §6 text (default); seed-v5: the seed's v5-tf eval script "
        "(union of plans, any reference), to reproduce the report's numbers",
    )
    p.add_argument(
        "--dataset",
        help="CooperBench dataset dir for the base-repository check (default: $COOP_DAG_DATASET, "
        "then the bundled dataset; a repo found in none is checked against its task text only)",
    )
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "lineage", help="print the chain (teacher, tokenizer, upweight, adapter...) behind a metric"
    )
    p.add_argument(
        "--metric",
        default="follow_through",
        help="plan_first | plan_content | follow_through | both_passed | merge_clean",
    )
    p.add_argument("--variant", required=True, help="variant name from configs/variants.yaml")
    p.add_argument(
        "--asset",
        default="behaviour_metrics",
        help="asset that computed the metric (behaviour_metrics, teacher_validation, "
        "base_student_metrics)",
    )
    p.add_argument(
        "--db", help="lineage DuckDB file (default: $COOP_DAG_LINEAGE_DB or runs/lineage.duckdb)"
    )
    p.set_defaults(func=_cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"coop-dag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
