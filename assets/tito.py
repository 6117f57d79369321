"""Stage 2: exact token pairs for the student (TITO parquet), with the seed's failure modes as
asset checks: steering leaking into prompts, think spans in outputs, missing end-of-turn,
a tool-call format that did not survive, trajectories on both sides of the split, and rows from
a validation or test repository. The two leaks that would invalidate the evaluation (steering
text in a prompt, an evaluation repository in training) are blocking: the adapter is not
trained on such a parquet."""

from typing import Any

import dagster as dg

from assets.partitions import VARIANTS, check_spec, variant_partitions
from coop_dag.agent.prompts import steering_section
from coop_dag.eval.lineage import content_version, file_version
from coop_dag.tito.build import TitoResult, build_tito
from coop_dag.tito.checks import evaluation_repos, run_checks
from coop_dag.tito.config import TitoConfig
from coop_dag.tito.trajectories import trajectories_from_run
from coop_dag.training.students import get_student
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource

CHECKS = {
    "rows_decode": "every row decodes with the student tokenizer",
    "no_steering_in_inputs": "no steering text (the section, its heading) in any input",
    "no_validation_or_test_repos": "no row from a validation or test repository",
    "no_think_in_outputs": "no <think>/</think> in any trained output",
    "outputs_end_with_eot": "every output ends with the end-of-turn token",
    "actions_have_tool_call_form": "every turn that executed an action carries the tool-call form",
    "split_disjoint": "train and val share no trajectory",
}
BLOCKING = {"no_steering_in_inputs", "no_validation_or_test_repos"}


@dg.asset(
    partitions_def=variant_partitions,
    group_name="tito",
    code_version="1",
    check_specs=[
        check_spec(name, "tito_parquet", description=desc, blocking=name in BLOCKING)
        for name, desc in CHECKS.items()
    ],
)
def tito_parquet(
    context: dg.AssetExecutionContext,
    rejection_sampled_pairs: dict,
    dataset: DatasetResource,
    rollout: RolloutResource,
    lineage: LineageResource,
):
    """One row per assistant turn of the kept trajectories: native ids when the teacher shares
    the student's tokenizer and returned them, else re-tokenised with the student's chat
    template; steering stripped, think stripped at token level, turns 0-2 upweighted,
    consecutive turns packed, split train/val by trajectory."""
    variant = VARIANTS[context.partition_key]
    student = get_student(variant.student)
    tokenizer = student.load_tokenizer()
    trajectories = trajectories_from_run(
        rejection_sampled_pairs["run_dir"], rejection_sampled_pairs["pair_ids"]
    )
    context.log.info(f"tito_parquet[{variant.name}]: {len(trajectories)} trajectories")
    result = build_tito(
        trajectories,
        tokenizer,
        TitoConfig.from_variant(variant),
        chat_template=student.chat_template,
        student_tokenizer_sha256=student.tokenizer_sha256,
        teacher_tokenizer_sha256=variant.teacher.get("tokenizer_sha256"),
        tokenizer_name=student.name,
        variant=variant.name,
    )
    paths = result.write(rollout.run_dir(variant.name, "tito"))
    version = content_version(
        {"train": file_version(paths["train"]), "val": file_version(paths["val"])}
    )
    facts = _facts(rejection_sampled_pairs.get("facts", {}), student, variant, version)
    lineage.record(
        context,
        version,
        upstream={"rejection_sampled_pairs": rejection_sampled_pairs["data_version"]},
        facts=facts,
    )
    yield dg.Output(
        {
            "train_path": str(paths["train"]),
            "val_path": str(paths["val"]),
            "metadata": result.metadata,
            "data_version": version,
            "student": student.name,
            "facts": facts,
        },
        data_version=dg.DataVersion(version),
        metadata=_output_metadata(result, paths, student, variant),
    )
    excluded = evaluation_repos(dataset.split.held_out, rejection_sampled_pairs.get("facts", {}))
    problems = run_checks(
        result.train,
        result.val,
        tokenizer,
        student.eot_id,
        steering_section(),
        excluded_repos=excluded,
    )
    yield from _check_results(problems)


def _facts(upstream: dict, student: Any, variant: Any, version: str) -> dict:
    """The lineage facts: the upstream ones plus the student, its tokenizer and chat template
    hashes, the variant's TITO settings and the parquet's data version."""
    return {
        **upstream,
        "student": student.name,
        "tokenizer_sha256": student.tokenizer_sha256,
        "chat_template_sha256": student.chat_template_sha256,
        "upweight": variant.upweight,
        "strip": variant.strip,
        "parquet_data_version": version,
    }


def _output_metadata(result: TitoResult, paths: dict, student: Any, variant: Any) -> dict:
    """The materialisation's metadata: row counts by side, path and turn, token counts, the
    build's counters."""
    stats = result.stats.as_dict()
    sources = result.rows_by_source()
    return {
        "train_path": dg.MetadataValue.path(str(paths["train"])),
        "rows_train": stats["rows_train"],
        "rows_val": stats["rows_val"],
        "rows_native": sources["native"],
        "rows_retokenised": sources["retokenised"],
        "fallback_missing_capture_turns": stats["fallback_missing_capture_turns"],
        "trained_tokens_train": stats["trained_tokens_train"],
        "total_tokens_train": stats["total_tokens_train"],
        "packed_rows": stats["packed_rows"],
        "turns_merged_by_packing": stats["turns_merged"],
        "truncated": stats["truncated_left"] + stats["truncated_right"],
        "rows_per_turn_index": dg.MetadataValue.json(
            {str(k): v for k, v in result.rows_per_turn_index().items()}
        ),
        "tokenizer_sha256": student.tokenizer_sha256,
        "chat_template_sha256": student.chat_template_sha256,
        "upweight": variant.upweight,
        "stats": dg.MetadataValue.json(stats),
    }


def _check_results(problems: dict[str, list[str]]):
    """One asset check result per check: passed when it found nothing, else the count and
    the first problems."""
    for name, found in problems.items():
        yield dg.AssetCheckResult(
            check_name=name,
            passed=not found,
            metadata={"problems": len(found), "first": dg.MetadataValue.text("\n".join(found[:5]))},
            description=CHECKS[name] if not found else f"{len(found)} problem(s): {found[0]}",
        )
