"""Serving a trained adapter, engine-agnostically, and proving the swap happened.

The seed's silent no-op: re-loading an existing ``lora_name`` with a new path answered
"Success" and kept serving the old weights, and a whole evaluation scored the previous
adapter. The cure here has three layers, all through vLLM's HTTP API:

1. **Content names, never reused.** A checkpoint is served as ``student-<sha12>`` (the hash
   of its weights, :func:`coop_dag.training.adapters.adapter_name`). New weights always get a new
   name; a name already loaded from *another* path is refused (:class:`AdapterNameConflict`)
   rather than silently reused; the same name at the same path is reused as is.
2. **The mapping, confirmed.** After loading, ``/v1/models`` must list the name with
   ``root`` = the path given (:meth:`coop_dag.serving.vllm.VllmEngine.load_adapter` also checks).
3. **A probe.** A fixed held-out first-turn prompt (:func:`first_turn_probe`: the first
   validation pair of the bundled dataset, agent1's first turn under the default coop prompt,
   with the bash tool -- the shape of what ``student_rollouts`` will send), decoded greedily by
   the base model and by the adapter: the adapter's output must differ from the base's
   (the check the seed recommended after its adapter answered token for token like the
   base). When an older adapter of the same variant is still loaded, the new one must also
   not answer *identically* to it -- same tokens and the same log-probabilities -- which is
   what a server that kept the old weights under a new name would do.

Only after the new adapter passes are older names of the same variant unloaded (the
variant is read from each adapter's ``lineage.json``), so a failed swap leaves whatever
served before still serving.

:func:`serve_adapter` returns a :class:`ServedAdapter` (endpoint, name, path, probe
outputs); with ``strict=True`` a failed verification raises :class:`SwapVerificationError`
naming what was seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_dag.serving.endpoints import same_path
from coop_dag.serving.errors import AdapterNameConflict, ServingError, SwapVerificationError
from coop_dag.serving.greedy import (
    Probe,
    ProbeOutput,
    logprobs_differ,
    outputs_differ,
    run_probe,
)
from coop_dag.serving.probe import first_turn_probe
from coop_dag.serving.vllm import VllmEngine, VllmError, as_engine

__all__ = ["ServedAdapter", "ensure_loaded", "serve_adapter"]

LogFn = Callable[[str], None]


@dataclass
class ServedAdapter:
    """An adapter loaded on an endpoint, and the evidence that it is the one answering."""

    url: str
    adapter_name: str
    adapter_path: str
    base_model_id: str
    variant: str | None
    probe: Probe
    base_output: ProbeOutput
    adapter_output: ProbeOutput
    reused: bool = False
    previous: dict[str, ProbeOutput] = field(default_factory=dict)
    unloaded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return self.url.rstrip("/") + "/v1"

    @property
    def differs_from_base(self) -> bool:
        return outputs_differ(self.adapter_output, self.base_output)

    @property
    def verified(self) -> bool:
        return not self.problems

    @property
    def litellm_model(self) -> str:
        """The litellm model string for this adapter (``openai/student-<sha12>``)."""
        return f"openai/{self.adapter_name}"

    def chat_model(self, **kwargs: Any):
        """A :class:`coop_dag.agent.models.LiteLLMChatModel` for the served adapter (token ids
        captured by default)."""
        from coop_dag.agent.models import LiteLLMChatModel

        kwargs.setdefault("capture_token_ids", True)
        return LiteLLMChatModel(self.litellm_model, api_base=self.endpoint, **kwargs)

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "endpoint": self.endpoint,
            "adapter_name": self.adapter_name,
            "adapter_path": self.adapter_path,
            "base_model_id": self.base_model_id,
            "litellm_model": self.litellm_model,
            "variant": self.variant,
            **self.probe.describe(),
            "base_output": self.base_output.as_dict(),
            "adapter_output": self.adapter_output.as_dict(),
            "differs_from_base": self.differs_from_base,
            "previous": {k: v.as_dict() for k, v in self.previous.items()},
            "reused": self.reused,
            "unloaded": list(self.unloaded),
            "verified": self.verified,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def _lineage_variant(path: str | None) -> str | None:
    from coop_dag.training.adapters import AdapterError, read_lineage

    if not path or not Path(path).is_dir():
        return None
    try:
        value = read_lineage(path, required=False).get("variant")
    except AdapterError:
        return None
    return str(value) if value else None


def _serves_same(loaded_root: str | None, path: str) -> bool:
    """The served copy is ``path``, or a byte-identical copy of its weights and config (two
    variants that trained the same adapter): serving it is no re-point."""
    if same_path(loaded_root, path):
        return True
    if loaded_root is None:
        return False
    for leaf in ("adapter_model.safetensors", "adapter_config.json"):
        a, b = Path(loaded_root) / leaf, Path(path) / leaf
        if not (a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()):
            return False
    return True


def serve_adapter(
    engine: VllmEngine | str,
    adapter_dir: str | os.PathLike,
    *,
    variant: str | None = None,
    base_model: str | None = None,
    probe: Probe | None = None,
    expected_name: str | None = None,
    strict: bool = True,
    unload_previous: bool = True,
    timeout: float = 600.0,
    log: LogFn | None = None,
) -> ServedAdapter:
    """Load ``adapter_dir`` on ``engine`` (a :class:`VllmEngine` or a URL) as
    ``student-<sha12>`` and verify it (see the module docstring).

    ``variant``: the variant it belongs to (default: its ``lineage.json``'s); older loaded
    adapters of that variant are probed against it and, once it is verified, unloaded.
    ``base_model``: the base model id (default: the first one ``/v1/models`` lists).
    ``expected_name``: the name the producer computed (a mismatch is an error).
    ``strict``: raise :class:`SwapVerificationError` when verification fails (else the
    problems are in ``ServedAdapter.problems`` and nothing older is unloaded)."""
    say = log or (lambda _msg: None)
    eng = as_engine(engine)
    path = str(Path(adapter_dir).expanduser().resolve())
    name = _content_name(path, expected_name)
    variant = variant or _lineage_variant(path)
    probe = probe or first_turn_probe()
    base, loaded = _base_and_loaded(eng, base_model)
    reused = _load_or_reuse(eng, name, path, loaded, say)

    # (2) the mapping, read back
    problems, warnings = _mapping_problems(eng, name, path, base)

    # (3) the probe: base vs adapter, and older adapters of the variant vs the new one
    base_out = run_probe(eng, base, probe, timeout=timeout)
    new_out = run_probe(eng, name, probe, timeout=timeout)
    problems += _same_as_base(name, base, probe, new_out, base_out)
    older = [
        n
        for n, root in loaded.items()
        if n != name and n.startswith("student-") and variant and _lineage_variant(root) == variant
    ]
    previous, old_problems, old_warnings = _probe_older(
        eng, name, variant, older, probe, new_out, timeout
    )
    problems += old_problems
    warnings += old_warnings

    served = ServedAdapter(
        url=eng.url,
        adapter_name=name,
        adapter_path=path,
        base_model_id=base,
        variant=variant,
        probe=probe,
        base_output=base_out,
        adapter_output=new_out,
        reused=reused,
        previous=previous,
        problems=problems,
        warnings=warnings,
    )
    for w in warnings:
        say(f"warning: {w}")
    if problems:
        message = f"swap verification failed for {name} ({path}) on {eng.url}: " + "; ".join(
            problems
        )
        say(message)
        if strict:
            raise SwapVerificationError(message, served)
        return served
    if unload_previous:
        _unload_older(eng, older, served, say)
    return served


def _content_name(path: str, expected_name: str | None) -> str:
    """The adapter's content name (``student-<sha12>``), checked against the producer's."""
    from coop_dag.training.adapters import AdapterError, adapter_name

    try:
        name = adapter_name(path)
    except AdapterError as exc:
        raise ServingError(str(exc)) from None
    if expected_name and expected_name != name:
        raise ServingError(
            f"{path}: its weights hash to {name!r} but the checkpoint says {expected_name!r} "
            "(the weights changed after training, or the dict points at another dir)"
        )
    return name


def _base_and_loaded(eng: VllmEngine, base_model: str | None) -> tuple[str, dict[str, str | None]]:
    """The base model id (``base_model``, else the first base listed) and the loaded
    adapters (name -> root)."""
    try:
        cards = eng.list_models()
    except VllmError as exc:
        raise ServingError(str(exc)) from None
    base = base_model or next((str(c["id"]) for c in cards if not c.get("parent")), None)
    if base is None:
        raise ServingError(f"{eng.url}/v1/models lists no base model")
    loaded = {str(c.get("id")): c.get("root") for c in cards if c.get("parent")}
    return base, loaded


def _load_or_reuse(
    eng: VllmEngine, name: str, path: str, loaded: dict[str, str | None], say: LogFn
) -> bool:
    """(1) Load ``path`` as ``name``, or reuse ``name`` when it already serves the same files;
    a name serving other files is never re-pointed. True when reused."""
    if name in loaded:
        if not _serves_same(loaded[name], path):
            raise AdapterNameConflict(
                f"{name} is already loaded on {eng.url} from {loaded[name]!r}, not {path!r}, "
                "and their weights or configs differ; a served name is never re-pointed (the "
                "seed's silent no-op). Unload it first if the old dir is gone."
            )
        say(f"{name} is already served from {loaded[name]} (same files as {path}); reusing it")
        return True
    try:
        eng.load_adapter(name, path)  # refuses loaded names, confirms root == path
    except VllmError as exc:
        raise ServingError(f"cannot serve {path} as {name} on {eng.url}: {exc}") from None
    say(f"loaded {name} from {path} on {eng.url}")
    return False


def _mapping_problems(
    eng: VllmEngine, name: str, path: str, base: str
) -> tuple[list[str], list[str]]:
    """(2) What /v1/models says about ``name`` after the load: ``(problems, warnings)``."""
    roots = {str(c.get("id")): c for c in eng.list_models()}
    card = roots.get(name)
    problems: list[str] = []
    warnings: list[str] = []
    if card is None:
        problems.append(f"/v1/models does not list {name} after loading it")
    elif not _serves_same(card.get("root"), path):
        problems.append(f"/v1/models maps {name} to {card.get('root')!r}, not {path!r}")
    elif card.get("parent") not in (None, base):
        warnings.append(f"/v1/models gives {name} the parent {card.get('parent')!r}, not {base!r}")
    return problems, warnings


def _same_as_base(
    name: str, base: str, probe: Probe, new_out: ProbeOutput, base_out: ProbeOutput
) -> list[str]:
    """(3) The problem when the adapter answers the probe exactly like its base."""
    if outputs_differ(new_out, base_out):
        return []
    same_lp = logprobs_differ(new_out, base_out) is False
    return [
        f"{name} answers the probe {probe.name!r} exactly like the base model "
        f"{base!r} ({len(new_out.token_ids or [])} identical tokens"
        + (", identical log-probabilities: the adapter is not applied" if same_lp else "")
        + f"): {new_out.text[:160]!r}"
    ]


def _probe_older(
    eng: VllmEngine,
    name: str,
    variant: str | None,
    older: list[str],
    probe: Probe,
    new_out: ProbeOutput,
    timeout: float,
) -> tuple[dict[str, ProbeOutput], list[str], list[str]]:
    """(3) Ask each older adapter of the variant the probe: one answering exactly like the new
    one means the server kept the old weights. Returns ``(answers, problems, warnings)``."""
    previous: dict[str, ProbeOutput] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for old in older:
        old_out = run_probe(eng, old, probe, timeout=timeout)
        previous[old] = old_out
        if outputs_differ(new_out, old_out):
            continue
        different = logprobs_differ(new_out, old_out)
        if different is False:
            problems.append(
                f"{name} answers exactly like the previously served {old} of variant "
                f"{variant!r} (same tokens, same log-probabilities) although its weights "
                "differ: the server is still serving the old weights"
            )
        elif different is None:
            warnings.append(
                f"{name} and the previously served {old} give the same greedy tokens and the "
                "endpoint returned no log-probabilities to tell them apart"
            )
    return previous, problems, warnings


def _unload_older(eng: VllmEngine, older: list[str], served: ServedAdapter, say: LogFn) -> None:
    """Unload the older adapters of the variant once the new one is verified."""
    for old in older:
        try:
            eng.unload_adapter(old)
            served.unloaded.append(old)
            say(f"unloaded {old} (an older adapter of variant {served.variant!r})")
        except VllmError as exc:  # already gone: fine
            say(f"could not unload {old}: {exc}")


def ensure_loaded(engine: VllmEngine | str, name: str, path: str | os.PathLike) -> bool:
    """Make sure ``name`` is served from ``path`` (e.g. after a server restart, before
    rollouts): load it when missing, refuse when it is served from elsewhere. True when it
    was loaded now. (No probe: :func:`serve_adapter` verified these weights already.)"""
    eng = as_engine(engine)
    target = str(Path(path).expanduser().resolve())
    try:
        loaded = eng.adapters()
    except VllmError as exc:
        raise ServingError(str(exc)) from None
    if name in loaded:
        if not _serves_same(loaded[name], target):
            raise AdapterNameConflict(
                f"{name} is served from {loaded[name]!r} on {eng.url}, not {target!r}"
            )
        return False
    try:
        eng.load_adapter(name, target)
    except VllmError as exc:
        raise ServingError(f"cannot serve {target} as {name} on {eng.url}: {exc}") from None
    return True
