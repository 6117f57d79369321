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

    main_score(Path(args.run_dir), Path(args.out) if args.out else None)
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from coop_dag.lineage import LineageStore, default_store_path, format_chain

    store = LineageStore(Path(args.db) if args.db else default_store_path())
    print(format_chain(store.metric(args.metric, args.variant, args.asset)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coop-dag",
        description="Plan-first coop distillation (TITO): tasks, scoring and tools. "
        "The pipeline itself runs as Dagster assets (`make demo`, `dagster dev`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "serve", help="start the embedded OpenAI-compatible server (see `coop-dag serve --help`)"
    )

    p = sub.add_parser("tasks", help="list feature pairs and their train/held-out split")
    p.add_argument("--dataset", help="CooperBench dataset dir (default: bundled)")
    p.add_argument("--subset", help="subset name under <dataset>/subsets/")
    p.add_argument("--held-out", help="comma-separated held-out repos")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser(
        "score",
        help="score a CooperBench-layout run dir: plan_first, plan_content, follow_through",
    )
    p.add_argument("run_dir", help="directory containing coop/<repo>/<task>/f<a>_f<b>/")
    p.add_argument("--out", help="write the full metrics JSON here")
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
    if argv[:1] == ["serve"]:  # its own parser, so `coop-dag serve --help` is the server's
        from coop_dag.serve import serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"coop-dag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
