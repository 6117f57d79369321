"""`coop-dag` command line: inspect tasks, check datasets and score CooperBench-layout run
directories."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coop_dag.dataset.config import DatasetConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# the CLI's flag for each dataset setting, named in resolve_dataset_config's errors
DATASET_FLAGS = {
    "dataset": "--dataset",
    "subset": "--subset",
    "mirror": "--mirror-dir",
    "validation": "--validation",
    "test": "--test",
}


def _dataset_config(args: argparse.Namespace, test_repos: str | None) -> DatasetConfig:
    """The `--dataset ... --test` flags of `tasks` / `eval` resolved like the dataset resource's
    config; only the split a command uses must be set, so an unset one is not an error."""
    from coop_dag.dataset.config import resolve_dataset_config

    return resolve_dataset_config(
        dataset_dir=args.dataset,
        subset=args.subset,
        mirror_dir=args.mirror_dir,
        validation_repos=args.validation,
        test_repos=test_repos,
        require_split=False,
        flag_names=DATASET_FLAGS,
    )


def _cmd_tasks(args: argparse.Namespace) -> int:
    from coop_dag.dataset.pool import task_pool_summary

    if args.test and args.held_out and args.test != args.held_out:
        raise ValueError(f"--test {args.test} and its older name --held-out {args.held_out} differ")
    # listing a dataset needs no split; unset: everything is train
    config = _dataset_config(args, args.test or args.held_out)
    summary = task_pool_summary(
        config.root,
        config.split,
        subset=config.subset,
        mirror_dir=config.mirror_dir,
        check_patches=not args.no_check,
    )
    if args.json:
        print(json.dumps({"config": config.describe(), **summary}, indent=2))
        return 0
    _print_task_pool(config, summary)
    return 0


def _print_task_pool(config: DatasetConfig, summary: dict) -> None:
    """`coop-dag tasks`' text: the settings and where they came from, then each task's features
    with their task files and its pairs with their merge results, then the counts."""
    from coop_dag.dataset.tasks import SPLITS

    src = config.sources
    print(f"dataset     {config.root}{' (bundled)' if config.bundled else ''}  [{src['dataset']}]")
    print(f"subset      {config.subset or 'all pairs'}  [{src['subset']}]")
    if config.mirror_dir:
        print(f"mirror      {config.mirror_dir}  [{src['mirror']}]")
    for name in ("validation", "test"):
        repos = getattr(config.split, name)
        print(f"{name:<11} {', '.join(repos) or 'none (every pair is train)'}  [{src[name]}]")
    by_task: dict[tuple[str, int], list[dict]] = {}
    for pair in summary["pairs"]:
        by_task.setdefault((pair["repo"], pair["task_id"]), []).append(pair)
    for (repo, task_id), pairs in by_task.items():
        print(f"\n{repo}/{task_id}  [{pairs[0]['split']}]")
        fids = sorted({f for p in pairs for f in (p["feature_a"], p["feature_b"])})
        for fid in fids:
            info = summary["features"][f"{repo}/{task_id}/feature{fid}"]
            files = ", ".join(info["files"]) or "(no task files)"
            note = "" if info["source"] == "files_modified" else f"  ({info['source']})"
            print(f"  feature{fid:<3} {files}{note}")
        merges = ", ".join(
            f"f{p['feature_a']}_f{p['feature_b']}" + (f" {p['merge']}" if p["merge"] else "")
            for p in pairs
        )
        print(f"  pairs      {merges}")
    for r in summary["rejected"]:
        print(f"rejected {r['where']}: {r['reason']}")
    counts = ", ".join(f"{summary[f'n_{n}_pairs']} {n}" for n in SPLITS)
    print(f"\n{summary['n_pairs']} pairs: {counts}; {summary['n_rejected_pairs']} rejected")


def _cmd_dataset_validate(args: argparse.Namespace) -> int:
    from coop_dag.dataset.check import validate_dataset
    from coop_dag.dataset.config import resolve_mirror

    mirror, _ = resolve_mirror(args.mirror_dir, flag="--mirror-dir")
    report = validate_dataset(
        Path(args.dir),
        mirror_dir=mirror,
        bundled=True if args.bundled_rules else None,
        run_tests=not args.no_tests,
        python=args.python or sys.executable,
        timeout=args.timeout,
        jobs=args.jobs,
        log=(lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda _msg: None),
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def _cmd_dataset_manifest(args: argparse.Namespace) -> int:
    from coop_dag.dataset.config import resolve_mirror
    from coop_dag.dataset.manifests import write_manifests

    mirror, _ = resolve_mirror(args.mirror_dir, flag="--mirror-dir")
    results = write_manifests(Path(args.dir), mirror, dry_run=args.check)
    for task, manifest, changed in results:
        merges = manifest["merges"]
        conflicts = sorted(k for k, v in merges.items() if v == "conflicts")
        state = ("differs" if args.check else "written") if changed else "unchanged"
        print(
            f"{task.manifest_path}: {state}; {len(merges)} pairs, "
            f"conflicts: {', '.join(conflicts) or 'none'}"
        )
    stale = sum(changed for _, _, changed in results)
    if args.check and stale:
        print(f"{stale} manifest(s) out of date: run `coop-dag dataset manifest {args.dir}`")
        return 1
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from coop_dag.eval.metrics import main_score

    main_score(
        Path(args.run_dir),
        Path(args.out) if args.out else None,
        rules=args.rules,
        dataset=Path(args.dataset) if args.dataset else None,
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import re

    from coop_dag.agent.rollouts import RolloutErrors
    from coop_dag.config.profiles import resolve_profile
    from coop_dag.config.variants import default_variant_name, get_variant
    from coop_dag.dataset.config import parse_repos
    from coop_dag.eval.model_eval import evaluate_model, score_table, select_eval_pairs
    from coop_dag.serving.settings import ServeSettings

    explicit_pairs = parse_repos(args.pairs) if args.pairs else ()
    config = _dataset_config(args, args.test)  # select_eval_pairs checks the chosen split
    pairs = select_eval_pairs(config, split=args.split, pair_ids=explicit_pairs)
    variant = get_variant(args.variant or default_variant_name())
    profile = resolve_profile()
    label = re.sub(r"[^\w.\-]+", "_", Path(args.model).name or args.model).strip("_")
    run_dir = Path(args.out) if args.out else profile.runs_dir / "eval" / label / config.root.name
    serve = ServeSettings(url=args.url or "", port=args.port, vllm_python=args.vllm_python or "")
    try:
        run = evaluate_model(
            args.model,
            pairs,
            run_dir,
            variant=variant,
            serve=serve,
            state_dir=profile.runs_dir / "serving",
            dataset=config,
            student=args.student,
            redis_url=profile.redis_url,
            concurrency=args.concurrency,
            allow_unsandboxed=args.allow_unsandboxed,
            api_key_env=args.api_key_env,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except RolloutErrors as exc:
        print(f"coop-dag eval: error: {exc}", file=sys.stderr)
        print(f"run directory: {run_dir} (rerun the command to finish them)", file=sys.stderr)
        return 1
    print(f"run        {run.run_dir}")
    print(f"model      {run.model_kind} {run.model_name}")
    where = f"{config.root}" + (f" subset {config.subset}" if config.subset else "")
    which = "given pairs" if explicit_pairs else f"{args.split} split"
    print(f"dataset    {where}: {len(pairs)} pairs ({which})")
    print(f"statuses   {json.dumps(run.rollout['statuses'])}")
    print()
    print(score_table(run.summary))
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from coop_dag.eval.lineage import LineageStore, default_store_path, format_chain

    store = LineageStore(Path(args.db) if args.db else default_store_path())
    print(format_chain(store.metric(args.metric, args.variant, args.asset)))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from coop_dag.config.hostcheck import check_profile
    from coop_dag.config.profiles import resolve_profile

    profile = resolve_profile()
    print(json.dumps(profile.describe(), indent=2))
    if not args.check:
        return 0
    problems = check_profile(profile)
    for problem in problems:
        print(f"missing: {problem}", file=sys.stderr)
    if not problems:
        print(f"profile {profile.name}: this host has what its engines need", file=sys.stderr)
    return 1 if problems else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import shlex

    from coop_dag.config.profiles import resolve_profile
    from coop_dag.serving.vllm_launch import (
        DEFAULT_MAX_MODEL_LEN,
        EVAL_DTYPE,
        VllmLauncher,
        VllmServeConfig,
        serve_command,
    )
    from coop_dag.training.students import get_student

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
    """The `coop-dag` parser: one sub-command each, added in `--help`'s order by the
    `_add_<command>` functions below."""
    parser = argparse.ArgumentParser(
        prog="coop-dag",
        description="Plan-first coop distillation (TITO): tasks, scoring and tools. "
        "The pipeline itself runs as Dagster assets (`make demo`, `dagster dev`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_serve, _add_profile, _add_tasks, _add_dataset, _add_score, _add_eval,
                _add_lineage):  # fmt: skip
        add(sub)
    return parser


def _add_dataset_flags(p: argparse.ArgumentParser, subset_help: str) -> None:
    """The dataset settings `tasks` and `eval` share (resolved by `_dataset_config`)."""
    p.add_argument("--dataset", help="CooperBench-format dataset dir (default: bundled)")
    p.add_argument("--subset", help=subset_help)
    p.add_argument("--mirror-dir", help="local git mirrors of real tasks' repositories")
    p.add_argument("--validation", help="comma-separated validation repositories")
    p.add_argument("--test", help="comma-separated test repositories")


def _add_serve(sub: argparse._SubParsersAction) -> None:
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


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="print the engines COOP_DAG_PROFILE and the COOP_DAG_* variables resolve to",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also check this host has what they need (Docker daemon, NVIDIA GPUs, verl's "
        "python); exit 1 naming each missing one",
    )
    p.set_defaults(func=_cmd_profile)


def _add_tasks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks",
        help="list each task's features with their task files, its pairs and their "
        "train/validation/test split",
        description="Settings resolve like the dataset resource's: flag, then environment "
        "variable (COOP_DAG_DATASET, COOP_DAG_SUBSET, COOP_DAG_MIRROR_DIR, "
        "COOP_DAG_VALIDATION_REPOS, COOP_DAG_TEST_REPOS), then default (the bundled dataset "
        "and its split).",
    )
    _add_dataset_flags(p, "subset name under <dataset>/subsets/, or a subset file path")
    p.add_argument("--held-out", help="older name of --test")
    p.add_argument("--json", action="store_true", help="print the task-pool summary as JSON")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="list every pair without task_pool's checks (runner present, patches applying to "
        "the base: needs the base, e.g. a mirror)",
    )
    p.set_defaults(func=_cmd_tasks)


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="check a dataset against docs/dataset-spec.md")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    v = dsub.add_parser(
        "validate",
        help="check layout, runner, patches, tests (fail without, pass with each feature) "
        "and merge results; exit 1 on any error",
    )
    _add_dir_and_mirror(v)
    v.add_argument(
        "--bundled-rules",
        action="store_true",
        help="apply the bundled-dataset rules as errors (default: only to the bundled dataset)",
    )
    v.add_argument("--no-tests", action="store_true", help="skip running runner.sh")
    v.add_argument("--python", help="interpreter the runner uses (PYTHON; default: this one)")
    v.add_argument("--timeout", type=float, default=300.0, help="seconds per runner call")
    v.add_argument("--jobs", type=int, default=1, help="tasks checked at once")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    v.set_defaults(func=_cmd_dataset_validate)
    m = dsub.add_parser(
        "manifest", help="compute each task's manifest.json (gold merge results) and write it"
    )
    _add_dir_and_mirror(m)
    m.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a manifest is out of date"
    )
    m.set_defaults(func=_cmd_dataset_manifest)


def _add_dir_and_mirror(p: argparse.ArgumentParser) -> None:
    """The dataset directory and mirror flag both `dataset` sub-commands take."""
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--mirror-dir", help="local git mirrors (default: $COOP_DAG_MIRROR_DIR)")


def _add_score(sub: argparse._SubParsersAction) -> None:
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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from coop_dag.serving.settings import (
        DEFAULT_PORT,  # the port the serving resource starts vLLM on
    )

    p = sub.add_parser(
        "eval",
        help="roll out a model or adapter on a dataset's pairs (default: the test split), as "
        "student_rollouts does, then score it: a CooperBench-layout run dir and the table",
        description="MODEL is an adapter directory (served by vLLM on its student), a student "
        "name (its untrained base, served by vLLM), a model served at --url, or a litellm "
        "model string (provider/model). Dataset settings resolve like `coop-dag tasks`.",
    )
    p.add_argument("model", help="adapter dir | student name | served model name | litellm model")
    p.add_argument("--url", help="attach to this running vLLM (default: start one, stop it after)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of a started vLLM")
    p.add_argument("--vllm-python", help="start vLLM with this python (default: the profile's)")
    p.add_argument("--student", help="base student of an adapter without lineage.json")
    p.add_argument("--variant", help="whose student_rollout limits apply (default: default)")
    _add_dataset_flags(p, "subset name under <dataset>/subsets/, or a subset file")
    p.add_argument(
        "--split", default="test", choices=("test", "validation", "train", "all"),
        help="which pairs (default: test; all: every pair of the dataset or subset)",
    )  # fmt: skip
    p.add_argument("--pairs", help="comma-separated pair ids (<repo>/<task>/f<a>_f<b>)")
    p.add_argument("--out", help="run directory (default: <runs>/eval/<model>/<dataset>)")
    p.add_argument("--concurrency", type=int, help="pairs at once (default: the variant's)")
    p.add_argument("--api-key-env", help="litellm models: the variable holding the API key")
    p.add_argument(
        "--allow-unsandboxed", action="store_true", help="run without bubblewrap (no isolation)"
    )
    p.set_defaults(func=_cmd_eval)


def _add_lineage(sub: argparse._SubParsersAction) -> None:
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
