"""Stage 3: the LoRA adapter, trained on the variant's TITO parquet by the embedded CPU trainer
or by verl (``TrainingResource.trainer_choice()``), probed on validation first turns against the
base model, and dropped into the adapters directory under its content-addressed name."""

import base64
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from assets.partitions import GPU_POOL, VARIANTS, check_spec, variant_partitions
from coop_dag.config.profiles import VERL_KINDS
from coop_dag.serving.endpoints import Endpoint
from coop_dag.serving.probe import ProbeResult, held_out_cases, probe_endpoint, probe_key
from coop_dag.training.adapters import AdapterError, validate_adapter
from coop_dag.training.contract import TrainResult, format_event
from coop_dag.training.publish import PublishedAdapter, publish_adapter
from coop_dag.training.recipes import recipe_for
from coop_dag.training.students import get_student
from coop_dag.training.train import train_lora
from coop_dag.training.verl import train_lora_verl
from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.serving import ServingResource
from resources.training import TrainingResource

PROBE_MIN_RATE = 0.7  # the seed's plan_first threshold, applied to the first-turn probe


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _curve_md(png: Path | None) -> str:
    if png is None or not Path(png).is_file():
        return "(no loss-curve image)"
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f"![loss curve](data:image/png;base64,{data})\n\n`{png}`"


def _probe_table(base: ProbeResult, tuned: ProbeResult) -> str:
    rows = [
        "| prompt | base | adapter | adapter's first turn |",
        "|---|---|---|---|",
    ]
    for b, a in zip(base.outputs, tuned.outputs, strict=False):
        text = " ".join(a.text.split())[:140].replace("|", "\\|")
        rows.append(f"| {a.key} | {'hit' if b.hit else '-'} | {'hit' if a.hit else '-'} | {text} |")
    rows.append(
        f"| **rate** | **{_pct(base.rate)}** | **{_pct(tuned.rate)}** | tool calls "
        f"{_pct(base.tool_call_rate)} -> {_pct(tuned.tool_call_rate)}, sends "
        f"{_pct(base.send_rate)} -> {_pct(tuned.send_rate)} |"
    )
    return "\n".join(rows)


def _base_probe(
    context: dg.AssetExecutionContext,
    student: Any,
    cases: list,
    training: TrainingResource,
    endpoint: Endpoint,
) -> ProbeResult:
    """The base model's probe on the serving engine, cached by what determines it (student
    weights, tokenizer, template, cases, generation settings, engine identity): it does not
    change between trainings."""
    engine_id = endpoint.identity or endpoint.url
    key = probe_key(student, cases, training.probe_max_new_tokens, engine_id)
    cache = training.work_root / "probe-cache" / f"{student.name}-{key}.json"
    if cache.is_file():
        context.log.info(f"probe[{student.name}]: cached base result {cache}")
        return ProbeResult.from_dict(json.loads(cache.read_text()))
    result = probe_endpoint(
        endpoint.engine,
        endpoint.base_model_id,
        cases,
        max_new_tokens=training.probe_max_new_tokens,
        log=context.log.info,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=1))
    tmp.replace(cache)
    return result


class VerlPipes:
    """Dagster Pipes around each verl launch (`training.verl_launch.LaunchSession`): the same
    contract for a local subprocess and a ``docker run`` -- the context in
    ``DAGSTER_PIPES_CONTEXT`` (`dg.PipesEnvContextInjector`), messages appended to a file in the
    channel directory `coop_dag.training.verl_run` hands over (inside the run's output dir,
    mounted at the same path in a container; `dg.PipesFileMessageReader`).
    `coop_dag.training.verl_pipes` (rank 0) logs every step into this run's log and reports the
    materialization's metadata (loss curve, exported adapter), collected here as `results`."""

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self.context = context
        self.results: list[Any] = []

    @contextmanager
    def __call__(self, channel: Path) -> Iterator[Mapping[str, str]]:
        reader = dg.PipesFileMessageReader(str(channel / f"messages-{uuid.uuid4().hex}.jsonl"))
        with dg.open_pipes_session(
            context=self.context,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=reader,
        ) as session:
            yield session.get_bootstrap_env_vars()
        self.results.extend(session.get_reported_results())

    def metadata(self) -> dict[str, Any]:
        """The reported materializations' metadata (the last launch's wins)."""
        merged: dict[str, Any] = {}
        for result in self.results:
            if isinstance(result, dg.MaterializeResult):
                merged.update(result.metadata or {})
        return merged


def _train(
    context: dg.AssetExecutionContext,
    training: TrainingResource,
    variant: Any,
    student: Any,
    recipe: Any,
    tito_parquet: dict,
    facts: dict,
) -> tuple[TrainResult, dict[str, Any]]:
    """The adapter, from the trainer the resource resolves: embedded (CPU, in process) or verl
    (its own environment or image, through Dagster Pipes: `VerlPipes`,
    `training.verl.train_lora_verl`). Same result either way, plus the metadata verl reported
    through Pipes (none for the embedded trainer or a reused finished run)."""
    choice = training.trainer_choice()
    training.check_host()  # e.g. the cluster profile on a host without GPUs: fail here, clearly
    if choice.kind in VERL_KINDS:
        launcher = training.verl_launcher()
        where = "CPU" if choice.device == "cpu" else f"{choice.nproc} GPU(s)"
        context.log.info(f"train[{variant.name}]: {choice.kind} ({launcher.describe()}, {where})")
        pipes = VerlPipes(context)
        result = train_lora_verl(
            student,
            tito_parquet["train_path"],
            tito_parquet.get("val_path"),
            recipe,
            training.run_root(variant.name),
            launcher,
            nproc=choice.nproc,
            on_log=lambda line: context.log.info(f"verl[{variant.name}] {line}"),
            data_version=tito_parquet["data_version"],
            facts=facts,
            force=training.force,
            experiment_name=variant.name,
            device=choice.device,
            session=pipes,
        )
        reported = pipes.metadata()
        path = reported.get("verl_adapter_path")
        if path is not None and path.value != result.lineage.get("verl_export"):
            raise RuntimeError(
                f"verl reported the adapter {path.value} through Pipes; the run exported "
                f"{result.lineage.get('verl_export')}"
            )
        return result, reported

    def forward(event: dict) -> None:
        context.log.info(f"train[{variant.name}] {format_event(event)}")

    result = train_lora(
        student,
        tito_parquet["train_path"],
        tito_parquet.get("val_path"),
        recipe,
        training.run_root(variant.name),
        progress=forward,
        data_version=tito_parquet["data_version"],
        facts=facts,
        force=training.force,
    )
    return result, {}


@dg.asset(
    partitions_def=variant_partitions,
    group_name="training",
    code_version="1",
    pool=GPU_POOL,
    check_specs=[
        check_spec("validation_loss_fell", "lora_checkpoint"),
        check_spec("adapter_weights_usable", "lora_checkpoint", blocking=True),
        check_spec("adapter_output_differs_from_base", "lora_checkpoint"),
        check_spec("first_turn_probe_rate", "lora_checkpoint"),
    ],
)
def lora_checkpoint(
    context: dg.AssetExecutionContext,
    tito_parquet: dict,
    dataset: DatasetResource,
    training: TrainingResource,
    serving: ServingResource,
    lineage: LineageResource,
):
    """A LoRA adapter for the variant's student, trained on its TITO parquet (recipe from
    ``configs/recipes.yaml``), then probed. The trainer is ``TrainingResource.trainer_choice()``:
    the embedded CPU trainer (``training.train.train_lora``) or verl in its own environment or
    image (``training.verl.train_lora_verl``: prepared rows + verl config written to the run
    dir, torchrun streamed into this log, the final checkpoint exported, repaired and
    validated). Both return the same result; everything after training is one code path.

    Input contract -- ``tito_parquet`` is a dict with at least:

    - ``train_path`` (str): the training TITO parquet; ``val_path`` (str | None): validation;
    - ``metadata`` (dict): the parquet's ``coop_dag.tito`` metadata (tokenizer name + sha256,
      chat-template sha256, variant, strip options, upweight, ...). The trainer re-reads it
      from the files and refuses a tokenizer / chat-template sha that is not the student's;
    - ``data_version`` (str): the parquet's data version (recorded as the adapter's upstream);
    - ``student`` (str): the student name the rows were tokenised for (must be the variant's);
    - optional ``facts`` (dict): lineage facts to carry on (teacher, held_out_repos, ...).

    Output: ``{adapter_name, adapter_dir, base_model, data_version, probe_base,
    probe_adapter, facts}`` plus ``student``, ``recipe``, ``train`` (loss/steps summary) and
    ``probe_compare``; ``facts.trainer`` is ``embedded-hf-trainer`` or ``verl``. The adapter
    lands at ``<adapters>/<variant>/student-<sha12>/`` (``TrainingResource.adapters_dir``),
    staged and renamed so the new-adapter sensor never sees a partial directory. Checks run
    inside this asset: the validation loss fell; the adapter's LoRA weights are usable
    (non-zero lora_B, finite, lora_alpha > 0, CAUSAL_LM); its probe output differs from the
    base model's; its first-turn probe rate (WARN below 70 %, the seed's plan_first bar).
    The probe runs on the serving engine (vLLM), the engine the student is evaluated with.
    """
    started = time.monotonic()
    variant = VARIANTS[context.partition_key]
    student_name = tito_parquet.get("student") or variant.student
    if student_name != variant.student:
        raise ValueError(
            f"tito_parquet was tokenised for student '{student_name}' but variant "
            f"'{variant.name}' trains '{variant.student}'"
        )
    student = get_student(student_name)
    # The variant's seed is the training seed (in the run key: another seed, another adapter).
    recipe = recipe_for(variant, training.recipe)
    # The probe reads validation repositories only: test repositories are never tuned on.
    cases = held_out_cases(dataset.root, dataset.validation, max_prompts=training.probe_prompts)
    context.log.info(
        f"lora_checkpoint[{variant.name}]: student {student.name}, recipe {recipe.name}, "
        f"data {tito_parquet['data_version']}, probe on {len(cases)} validation prompts"
    )

    upstream_facts = dict(tito_parquet.get("facts") or {})
    meta = tito_parquet.get("metadata") or {}
    facts = {
        **upstream_facts,
        "variant": variant.name,
        "student": student.name,
        "recipe": recipe.name,
        "tokenizer_sha256": student.tokenizer_sha256,
        "chat_template_sha256": student.chat_template_sha256,
        "upweight": meta.get("upweight", variant.upweight),
        "strip": meta.get("strip", variant.strip),
        "parquet_data_version": tito_parquet["data_version"],
        "validation_repos": list(dataset.validation),
        "held_out_repos": list(dataset.test),  # the test repositories (older name)
        "seed": recipe.seed,
    }

    result, reported = _train(context, training, variant, student, recipe, tito_parquet, facts)
    if result.reused:
        context.log.info(f"train[{variant.name}]: run {result.run_key} already finished; reused")
    # the probe runs where the student will be evaluated: on the serving engine
    endpoint = serving.ensure(student.name, log=context.log.info)
    probe_base = _base_probe(context, student, cases, training, endpoint)
    yield from _publish(
        context, training, lineage, variant, student, recipe, tito_parquet, facts, cases,
        endpoint, probe_base, result, started, reported,
    )  # fmt: skip


def _publish(
    context: dg.AssetExecutionContext,
    training: TrainingResource,
    lineage: LineageResource,
    variant: Any,
    student: Any,
    recipe: Any,
    tito_parquet: dict,
    facts: dict,
    cases: list,
    endpoint: Endpoint,
    probe_base: ProbeResult,
    result: TrainResult,
    started: float,
    reported: Mapping[str, Any] | None = None,
):
    """Whichever trainer made it, `training.publish.publish_adapter` copies the adapter under
    its content-addressed name into the adapters directory, probes it on the serving engine
    and writes its lineage; here: the lineage record, the output (with the metadata verl
    `reported` through Pipes: ``verl_*``) and the checks."""
    pub = publish_adapter(
        result,
        lambda name: training.adapter_dir(variant.name, name),
        student=student,
        recipe=recipe,
        upstream_version=tito_parquet["data_version"],
        facts=facts,
        cases=cases,
        endpoint=endpoint,
        probe_base=probe_base,
        max_new_tokens=training.probe_max_new_tokens,
        log=context.log.info,
    )
    lineage.record(
        context,
        pub.data_version,
        upstream={"tito_parquet": tito_parquet["data_version"]},
        facts=pub.facts,
        metrics={},
    )
    wall = round(time.monotonic() - started, 1)
    yield dg.Output(
        pub.output,
        data_version=dg.DataVersion(pub.data_version),
        metadata={**_output_metadata(pub, result, student, recipe, wall), **(reported or {})},
    )
    yield from _checks(pub, result, student)


def _output_metadata(
    pub: PublishedAdapter, result: TrainResult, student: Any, recipe: Any, wall: float
) -> dict[str, Any]:
    """The materialization's metadata: adapter, training numbers, probes, loss curve, facts."""
    png = pub.adapter_dir / "loss_curve.png"
    return {
        "adapter_name": pub.name,
        "adapter_dir": dg.MetadataValue.path(str(pub.adapter_dir)),
        "student": student.name,
        "recipe": recipe.name,
        "trainer": pub.trainer,
        "steps": result.steps,
        "epochs": result.epochs,
        "tokens_seen": result.tokens_seen,
        "trained_tokens": result.trained_tokens,
        "tokens_per_s": result.tokens_per_s,
        "train_time_s": result.train_time_s,
        "wall_time_s": wall,
        "train_loss": result.train_loss if result.train_loss is not None else float("nan"),
        "initial_val_loss": _num(result.initial_val_loss),
        "final_val_loss": _num(result.final_val_loss),
        "trainable_params": result.trainable_params,
        "train_rows": result.train_rows,
        "resumed_from_step": result.resumed_from_step or 0,
        "reused_finished_run": result.reused,
        "probe_base_rate": pub.probe_base.rate,
        "probe_adapter_rate": pub.probe_adapter.rate,
        "probe": dg.MetadataValue.md(_probe_table(pub.probe_base, pub.probe_adapter)),
        "loss_curve": dg.MetadataValue.md(_curve_md(png)),
        "loss_curve_path": dg.MetadataValue.path(str(png)),
        "lineage": dg.MetadataValue.json(
            {k: v for k, v in pub.facts.items() if isinstance(v, str | int | float | bool)}
        ),
    }


def _checks(
    pub: PublishedAdapter, result: TrainResult, student: Any
) -> Iterator[dg.AssetCheckResult]:
    """The four checks of ``lora_checkpoint``, in its ``check_specs`` order."""
    yield dg.AssetCheckResult(
        check_name="validation_loss_fell",
        passed=result.val_loss_fell,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "initial_val_loss": _num(result.initial_val_loss),
            "final_val_loss": _num(result.final_val_loss),
        },
        description=(
            f"validation loss {result.initial_val_loss} -> {result.final_val_loss}"
            if result.initial_val_loss is not None and result.final_val_loss is not None
            else f"final validation loss {result.final_val_loss}; no loss before training "
            f"({pub.trainer} validates after steps only): cannot tell whether it fell"
            if result.final_val_loss is not None
            else "no validation rows: cannot tell whether training generalised"
        ),
    )
    yield _weights_check(pub.adapter_dir, student)
    compare = pub.compare
    yield dg.AssetCheckResult(
        check_name="adapter_output_differs_from_base",
        passed=compare["differs"],
        metadata={"n_changed": compare["n_changed"], "n_compared": compare["n_compared"]},
        description=(
            f"{compare['n_changed']}/{compare['n_compared']} first turns differ from the base"
            if compare["differs"]
            else "adapter output is identical to the base model's (the seed's first failure)"
        ),
    )
    base_rate, rate = pub.probe_base.rate, pub.probe_adapter.rate
    yield dg.AssetCheckResult(
        check_name="first_turn_probe_rate",
        passed=rate >= PROBE_MIN_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rate": rate, "base_rate": base_rate},
        description=(
            f"validation first turns with a plan send_message naming a task path: "
            f"{_pct(base_rate)} base -> {_pct(rate)} adapter"
        ),
    )


def _weights_check(final: Path, student: Any) -> dg.AssetCheckResult:
    """``adapter_weights_usable``: `validate_adapter` on the published copy."""
    try:
        info = validate_adapter(final, expected_base=str(student.model_dir))
    except AdapterError as err:
        return dg.AssetCheckResult(
            check_name="adapter_weights_usable", passed=False, description=str(err)
        )
    return dg.AssetCheckResult(
        check_name="adapter_weights_usable",
        passed=True,
        metadata={
            "lora_alpha": info.lora_alpha,
            "r": info.r,
            "lora_tensors": info.lora_tensors,
        },
        description=f"{info.lora_tensors} LoRA tensors, non-zero B, lora_alpha {info.lora_alpha}",
    )


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)
