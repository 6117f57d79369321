"""Stage 3: the trained adapter, served under its content name and verified by a probe."""

import dagster as dg

from assets.partitions import VARIANTS, variant_partitions
from coop_dag.adapters import AdapterError, read_lineage, repair_adapter
from coop_dag.lineage import content_version
from coop_dag.serving import serve_adapter
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


class ServedAdapterConfig(dg.Config):
    """Serve this adapter directory instead of `lora_checkpoint`'s — set by the new-adapter
    sensor for adapters dropped into the adapters directory (e.g. by an external verl job),
    or by hand for the `evaluate_adapter` job. With it, no `lora_checkpoint` materialisation
    is needed: the adapter's own `lineage.json` says which student it was trained on."""

    adapter_dir: str = ""


@dg.asset(
    partitions_def=variant_partitions,
    group_name="serving",
    code_version="1",
    check_specs=[dg.AssetCheckSpec(CHECK, asset="served_adapter", blocking=True)],
    # a dropped adapter (config.adapter_dir) needs no lora_checkpoint: a partition never
    # materialised loads as None instead of failing the run
    ins={"lora_checkpoint": dg.AssetIn(metadata={"allow_missing_partitions": True})},
)
def served_adapter(
    context: dg.AssetExecutionContext,
    config: ServedAdapterConfig,
    lora_checkpoint: dict | None,
    serving: ServingResource,
    lineage: LineageResource,
):
    """The variant's LoRA adapter loaded into the serving engine as `student-<sha12>` (never
    reused for other weights), its name→path mapping read back from /v1/models, and a
    greedy held-out first-turn probe showing its output differs from the base model's --
    the check that would have caught the seed's silent hot-reload no-op. Older adapters of
    the variant are unloaded once the new one passes. The embedded server is started on the
    resource's fixed port if needed and left running for `student_rollouts`."""
    variant = VARIANTS[context.partition_key]
    if config.adapter_dir:  # a dropped adapter: fix verl 0.7.1's export quirks, then serve it
        adapter_dir, expected_name = config.adapter_dir, None
        for change in repair_adapter(adapter_dir):
            context.log.info(f"repaired {adapter_dir}: {change}")
        try:
            dropped = read_lineage(adapter_dir, required=False)
        except AdapterError as exc:
            raise dg.Failure(description=f"adapter_dir {adapter_dir}: {exc}") from None
        # its own lineage stands in for lora_checkpoint's output
        lora_checkpoint = {
            "student": dropped.get("student"),
            "base_model": dropped.get("base_model"),
            "facts": {"adapter_dir": adapter_dir, "adapter_variant": dropped.get("variant")},
        }
    elif lora_checkpoint is None:
        raise dg.Failure(
            description=f"no lora_checkpoint materialisation for variant {variant.name}: "
            "materialise lora_checkpoint first, or give served_adapter's config an adapter_dir"
        )
    else:
        adapter_dir = lora_checkpoint["adapter_dir"]
        expected_name = lora_checkpoint.get("adapter_name")
    student = lora_checkpoint.get("student") or variant.student  # the student it trained on
    endpoint = serving.ensure(student, log=context.log.info)
    served = serve_adapter(
        endpoint.engine,
        adapter_dir,
        variant=variant.name,
        base_model=endpoint.base_model_id,
        probe=serving.probe(),
        expected_name=expected_name,
        strict=False,  # a failed probe fails the blocking check below, with the evidence
        log=context.log.info,
    )
    out = served.as_dict()
    out.update(
        {
            "api_base": endpoint.api_base,
            "student": student,
            "base_model": lora_checkpoint.get("base_model"),
            "server_kind": endpoint.kind,
        }
    )
    out["data_version"] = content_version(
        {
            "adapter_name": served.adapter_name,
            "base_model_id": served.base_model_id,
            "student": student,
            "probe": served.probe.sha12,
            "lora_checkpoint": lora_checkpoint.get("data_version"),
        }
    )
    facts = {
        "student": student,
        "adapter_name": served.adapter_name,
        "adapter_path": served.adapter_path,
        "base_model": lora_checkpoint.get("base_model") or served.base_model_id,
        "served_base_model_id": served.base_model_id,
        "endpoint": endpoint.api_base,
        "server_kind": endpoint.kind,
        "probe": served.probe.name,
        "probe_sha12": served.probe.sha12,
        "differs_from_base": served.differs_from_base,
    }
    # the provenance downstream records (student_rollouts spreads it into its lineage facts)
    out["facts"] = {**(lora_checkpoint.get("facts") or {}), **facts}
    upstream = {}
    if lora_checkpoint.get("data_version"):
        upstream["lora_checkpoint"] = lora_checkpoint["data_version"]
    lineage.record(context, out["data_version"], upstream=upstream, facts=facts)
    yield dg.Output(
        out,
        data_version=dg.DataVersion(out["data_version"]),
        metadata={
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
        },
    )
    if served.verified:
        description = (
            f"{served.adapter_name} answers the probe differently from {served.base_model_id}"
        )
    else:
        description = "; ".join(served.problems)
    yield dg.AssetCheckResult(
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
