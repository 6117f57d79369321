"""Stage 3: the trained adapter, served under its content name and verified by a probe."""

import dagster as dg

from assets.partitions import GPU_POOL, VARIANTS, check_spec, variant_partitions
from coop_dag.eval.lineage import content_version
from coop_dag.serving.endpoints import Endpoint
from coop_dag.serving.swap import ServedAdapter, serve_adapter
from resources.lineage import LineageResource
from resources.serving import ServingResource

CHECK = "adapter_differs_from_base"


def _probe_table(served) -> str:
    def cell(text: str) -> str:
        text = (text or "(empty)").replace("|", "\\|").replace("\n", "⏎")
        return text[:400] + ("…" if len(text) > 400 else "")

    rows = [("base", served.base_model_id, served.base_output)]
    rows.append(("adapter", served.adapter_name, served.adapter_output))
    rows += [("previous", name, out) for name, out in served.previous.items()]
    lines = ["| | model | tokens | output |", "|---|---|---|---|"]
    for role, model, out in rows:
        n = "?" if out.token_ids is None else len(out.token_ids)
        lines.append(f"| {role} | `{model}` | {n} | {cell(out.text)} |")
    return "\n".join(lines)


def served_check_spec(asset: str, partitions_def: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
    """The probe check of a serving asset, partitioned like the asset (its result belongs to
    the adapter of that partition, not to the asset as a whole)."""
    return check_spec(CHECK, asset, partitions_def, blocking=True)


@dg.asset(
    partitions_def=variant_partitions,
    group_name="serving",
    code_version="1",
    pool=GPU_POOL,
    check_specs=[served_check_spec("served_adapter", variant_partitions)],
)
def served_adapter(
    context: dg.AssetExecutionContext,
    lora_checkpoint: dict,
    serving: ServingResource,
    lineage: LineageResource,
):
    """The variant's LoRA adapter (``lora_checkpoint``'s, and only that: an adapter dropped
    into the adapters directory gets its own ``dropped_adapter`` partition) loaded into the
    serving engine as `student-<sha12>` (never reused for other weights), its name→path
    mapping read back from /v1/models, and a greedy held-out first-turn probe showing its
    output differs from the base model's -- the check that would have caught the seed's
    silent hot-reload no-op. Older adapters of the variant are unloaded once the new one
    passes. The server is started on the resource's fixed port if needed; its lease ends with
    the step."""
    variant = VARIANTS[context.partition_key]
    student = lora_checkpoint.get("student") or variant.student  # the student it trained on
    yield from serve_and_check(
        context,
        serving,
        lineage,
        variant=variant.name,
        student=student,
        adapter_dir=lora_checkpoint["adapter_dir"],
        expected_name=lora_checkpoint.get("adapter_name"),
        base_model=lora_checkpoint.get("base_model"),
        upstream_facts=lora_checkpoint.get("facts") or {},
        upstream={"lora_checkpoint": lora_checkpoint.get("data_version")},
    )


def serve_and_check(
    context: dg.AssetExecutionContext,
    serving: ServingResource,
    lineage: LineageResource,
    *,
    variant: str,
    student: str,
    adapter_dir: str,
    expected_name: str | None,
    base_model: str | None,
    upstream_facts: dict,
    upstream: dict[str, str | None],
):
    """Serve `adapter_dir` for `student`, probe it against the base, record lineage; yields
    the asset's output and its `adapter_differs_from_base` check (shared by served_adapter
    and dropped_adapter)."""
    endpoint = serving.ensure(student, log=context.log.info)
    served = serve_adapter(
        endpoint.engine,
        adapter_dir,
        variant=variant,
        base_model=endpoint.base_model_id,
        probe=serving.probe(),
        expected_name=expected_name,
        strict=False,  # a failed probe fails the blocking check below, with the evidence
        log=context.log.info,
    )
    out, facts = _served_output(served, endpoint, student, base_model, upstream_facts, upstream)
    recorded = {k: v for k, v in upstream.items() if v}
    lineage.record(context, out["data_version"], upstream=recorded, facts=facts)
    yield dg.Output(
        out,
        data_version=dg.DataVersion(out["data_version"]),
        metadata=_served_metadata(served, endpoint),
    )
    yield _probe_check(served)


def _served_output(
    served: ServedAdapter,
    endpoint: Endpoint,
    student: str,
    base_model: str | None,
    upstream_facts: dict,
    upstream: dict[str, str | None],
) -> tuple[dict, dict]:
    """The asset's output (the served adapter, its endpoint, data version and the provenance
    downstream records) and the lineage facts of this step."""
    out = served.as_dict()
    out.update(
        {
            "api_base": endpoint.api_base,
            "student": student,
            "base_model": base_model,
            "server_kind": endpoint.kind,
        }
    )
    out["data_version"] = content_version(
        {
            "adapter_name": served.adapter_name,
            "base_model_id": served.base_model_id,
            "student": student,
            "probe": served.probe.sha12,
            **upstream,
        }
    )
    facts = {
        "student": student,
        "adapter_name": served.adapter_name,
        "adapter_path": served.adapter_path,
        "base_model": base_model or served.base_model_id,
        "served_base_model_id": served.base_model_id,
        "endpoint": endpoint.api_base,
        "server_kind": endpoint.kind,
        "probe": served.probe.name,
        "probe_sha12": served.probe.sha12,
        "differs_from_base": served.differs_from_base,
    }
    # the provenance downstream records (student_rollouts spreads it into its lineage facts)
    out["facts"] = {**upstream_facts, **facts}
    return out, facts


def _served_metadata(served: ServedAdapter, endpoint: Endpoint) -> dict:
    """The materialisation's metadata: where it is served and what the probe saw."""
    return {
        "endpoint": dg.MetadataValue.url(endpoint.api_base),
        "adapter_name": served.adapter_name,
        "adapter_path": dg.MetadataValue.path(served.adapter_path),
        "litellm_model": served.litellm_model,
        "base_model_id": served.base_model_id,
        "server_kind": endpoint.kind,
        "server_pid": endpoint.pid or 0,
        "probe": served.probe.name,
        "probe_base_output": served.base_output.text,
        "probe_adapter_output": served.adapter_output.text,
        "probe_outputs": dg.MetadataValue.md(_probe_table(served)),
        "differs_from_base": served.differs_from_base,
        "reused": served.reused,
        "unloaded": dg.MetadataValue.json(served.unloaded),
    }


def _probe_check(served: ServedAdapter) -> dg.AssetCheckResult:
    """The blocking `adapter_differs_from_base` check: passed when the swap was verified."""
    if served.verified:
        description = (
            f"{served.adapter_name} answers the probe differently from {served.base_model_id}"
        )
    else:
        description = "; ".join(served.problems)
    return dg.AssetCheckResult(
        check_name=CHECK,
        passed=served.verified,
        metadata={
            "differs_from_base": served.differs_from_base,
            "base_tokens": len(served.base_output.token_ids or []),
            "adapter_tokens": len(served.adapter_output.token_ids or []),
            "problems": dg.MetadataValue.json(served.problems),
            "warnings": dg.MetadataValue.json(served.warnings),
        },
        description=description[:1000],
    )
