"""LoRA adapter directories: validation, repair of verl's export, content names, lineage.

An adapter is a PEFT directory that vLLM can load:
`adapter_config.json` + `adapter_model.safetensors`, plus our `lineage.json`.

- `validate_adapter` checks what the seed learnt the hard way: r > 0, lora_alpha > 0 (verl
  0.7.1's model merger wrote `lora_alpha: 0`, which scales the whole delta to nothing; 0.9.1
  still does when a checkpoint lacks its `lora_train_meta.json`),
  `task_type == "CAUSAL_LM"` as a plain string (verl 0.7.1 + peft >= 0.13 wrote the enum's
  repr, or nothing), the base model when one is expected, LoRA tensors whose shapes agree
  with r, finite and not all zero (an all-zero `lora_B` is an untrained adapter).
- `repair_adapter` rewrites the export's known defects in place, atomically, and says what
  it changed; anything it cannot know (the alpha the recipe trained with) must be given.
- `adapter_sha12` hashes the weights file; `adapter_name` turns it into the served name
  `student-<sha12>`. A name is therefore never reused for different weights, which is the
  project's answer to vLLM's silent no-op when an existing `lora_name` is re-loaded.
- `merged_model`: the base model with an adapter's LoRA delta folded into its weights, cached
  and content-keyed: what the CPU serves for held-out rollouts (vLLM's CPU LoRA kernels made
  the adapter ~3x slower than the same weights merged; bench/bench_vllm.py --adapter).
- `write_lineage` / `read_lineage`: `lineage.json`, the facts that make every metric of
  this adapter traceable (variant, teacher, tokenizer sha, upweight, base model, ...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.util.files import atomic_write_text, file_sha256

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LINEAGE_FILE",
    "NAME_PREFIX",
    "AdapterError",
    "AdapterInfo",
    "adapter_name",
    "adapter_sha12",
    "merged_model",
    "read_lineage",
    "repair_adapter",
    "validate_adapter",
    "write_lineage",
    "main",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAGE_FILE = "lineage.json"
NAME_PREFIX = "student-"

TASK_TYPE = "CAUSAL_LM"
PEFT_TYPE = "LORA"

# Spellings of the causal-LM task type seen in broken exports: the enum's str()/repr and
# lower case. Anything else (e.g. "SEQ_CLS") is a different adapter and is never "repaired".
_TASK_TYPE_ALIASES = {"TaskType.CAUSAL_LM", "<TaskType.CAUSAL_LM: 'CAUSAL_LM'>", "causal_lm"}
_PEFT_TYPE_ALIASES = {"PeftType.LORA", "<PeftType.LORA: 'LORA'>", "lora"}


class AdapterError(ValueError):
    """The adapter directory is unusable; the message names the directory and the defect."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    r: int
    lora_alpha: float
    task_type: str
    base_model: str | None
    target_modules: tuple[str, ...] | str
    sha12: str
    lora_tensors: int  # lora_A + lora_B tensors
    weights_bytes: int

    @property
    def name(self) -> str:
        """The served name: `student-<sha12>`."""
        return NAME_PREFIX + self.sha12

    def as_metadata(self) -> dict[str, Any]:
        return {
            "adapter_name": self.name,
            "adapter_sha12": self.sha12,
            "adapter_path": str(self.path),
            "lora_r": self.r,
            "lora_alpha": self.lora_alpha,
            "task_type": self.task_type,
            "base_model": self.base_model,
            "target_modules": (
                self.target_modules
                if isinstance(self.target_modules, str)
                else list(self.target_modules)
            ),
            "lora_tensors": self.lora_tensors,
            "weights_bytes": self.weights_bytes,
        }


# --------------------------------------------------------------------------- helpers


def _dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise AdapterError(f"{p}: not a directory (expected a PEFT adapter directory)")
    return p


def _load_config(d: Path) -> dict[str, Any]:
    cfg_path = d / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"{d}: missing {ADAPTER_CONFIG}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _same_model(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# --------------------------------------------------------------------------- names


def adapter_sha12(path: str | os.PathLike) -> str:
    """First 12 hex digits of the sha256 of `adapter_model.safetensors` (the weights only:
    renaming the directory or rewriting its config keeps the name)."""
    d = _dir(path)
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{d}: missing {ADAPTER_WEIGHTS}")
    return file_sha256(weights)[:12]


def adapter_name(path: str | os.PathLike) -> str:
    """The content-addressed served name, `student-<sha12>`."""
    return NAME_PREFIX + adapter_sha12(path)


# --------------------------------------------------------------------------- merging

# Files of the base model directory the merged directory takes as they are (the tokenizer,
# the chat template, generation defaults); the weights and config are written by the merge.
_MERGE_SKIP = {"model.safetensors", "model.safetensors.index.json", "config.json"}


def merged_model(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike) -> Path:
    """A model directory holding ``base_dir``'s weights with the adapter merged in (PEFT's
    ``merge_and_unload`` in float32), tokenizer and chat template copied from the base, so vLLM
    serves it as a plain model. Built once per (base, adapter weights, adapter config) under
    ``<cache>/merged/<base dir name>/`` atomically (a killed build leaves nothing half
    written); its manifest names the adapter, the base and the library versions."""
    from coop_dag.training.student_cache import cache_root, materialize

    adapter, base = _dir(adapter_dir), Path(base_dir)
    cfg_sha = file_sha256(adapter / ADAPTER_CONFIG)[:8]
    final = cache_root() / "merged" / base.name / f"{adapter_name(adapter)}-{cfg_sha}"

    def build(tmp: Path) -> dict:
        import shutil

        import peft
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.float32, local_files_only=True
        )
        merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        for f in base.iterdir():
            if f.is_file() and f.name not in _MERGE_SKIP and not f.name.startswith("coop_dag"):
                shutil.copy2(f, tmp / f.name)
        return {
            "adapter": adapter_name(adapter),
            "adapter_dir": str(adapter),
            "adapter_config_sha256": file_sha256(adapter / ADAPTER_CONFIG),
            "base_model_dir": str(base),
            "versions": {"peft": peft.__version__, "torch": torch.__version__},
        }

    return materialize(final, build, label="merged")[0]


# --------------------------------------------------------------------------- validation


def _check_tensors(d: Path, r: int | None, allow_zero: bool) -> int:
    """Check LoRA tensors; `r` None: per-module ranks (PEFT's rank_pattern), only > 0."""
    from safetensors import safe_open  # lazy: torch import is slow

    weights = d / ADAPTER_WEIGHTS
    try:
        handle = safe_open(os.fspath(weights), framework="pt")
    except Exception as exc:  # safetensors raises its own error types
        raise AdapterError(f"{weights}: not a readable safetensors file ({exc})") from exc
    lora_a: list[str] = []
    lora_b: list[str] = []
    zero_b: list[str] = []
    with handle as f:
        keys = list(f.keys())
        for key in keys:
            if ".lora_A." in key or ".lora_embedding_A" in key:
                lora_a.append(key)
            elif ".lora_B." in key or ".lora_embedding_B" in key:
                lora_b.append(key)
        if not lora_a or not lora_b:
            raise AdapterError(
                f"{weights}: no LoRA tensors (found {len(lora_a)} lora_A and {len(lora_b)} "
                f"lora_B among {len(keys)} tensors); is this a merged full model?"
            )
        a_keys = set(lora_a)
        for key in lora_a + lora_b:
            is_a = key in a_keys
            tensor = f.get_tensor(key)
            shape = tuple(tensor.shape)
            if len(shape) != 2:
                raise AdapterError(f"{weights}: tensor {key} has shape {shape}, expected 2-D")
            rank_dim = shape[0] if is_a else shape[1]  # A: (r, in), B: (out, r)
            if (r is not None and rank_dim != r) or rank_dim <= 0:
                raise AdapterError(
                    f"{weights}: tensor {key} has shape {shape}, which does not match r={r} "
                    f"in {ADAPTER_CONFIG}"
                )
            values = tensor.float()
            if not bool(values.isfinite().all()):
                raise AdapterError(f"{weights}: tensor {key} has NaN or infinite values")
            if not is_a and not bool(values.any()):
                zero_b.append(key)
    if zero_b and not allow_zero:
        shown = ", ".join(zero_b[:3]) + (" ..." if len(zero_b) > 3 else "")
        what = "all" if len(zero_b) == len(lora_b) else str(len(zero_b))
        raise AdapterError(
            f"{weights}: {what} of {len(lora_b)} lora_B tensors are all zero ({shown}): the "
            "adapter is a no-op there (untrained, or the export lost the trained weights)"
        )
    return len(lora_a) + len(lora_b)


def validate_adapter(
    path: str | os.PathLike,
    expected_base: str | None = None,
    *,
    allow_zero_tensors: bool = False,
) -> AdapterInfo:
    """Check that `path` is a servable LoRA adapter and describe it; raise AdapterError
    naming the first defect otherwise. `expected_base`: the base model it must name in
    `base_model_name_or_path` (compared as strings, ignoring a trailing slash)."""
    d = _dir(path)
    cfg = _load_config(d)
    cfg_path = d / ADAPTER_CONFIG
    if not (d / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{d}: missing {ADAPTER_WEIGHTS}")

    peft_type = cfg.get("peft_type")
    if peft_type is not None and peft_type != PEFT_TYPE:
        raise AdapterError(
            f"{cfg_path}: peft_type is {peft_type!r}, expected {PEFT_TYPE!r} "
            "(repair_adapter fixes an enum spelling such as 'PeftType.LORA')"
        )
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise AdapterError(f"{cfg_path}: r is {r!r}, expected a positive integer")
    alpha = _number(cfg.get("lora_alpha"))
    if alpha is None or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(
            f"{cfg_path}: lora_alpha is {cfg.get('lora_alpha')!r}; it must be > 0 (verl 0.7.1's "
            "model merger writes 0, which scales the LoRA delta to nothing): run "
            "repair_adapter(dir, lora_alpha=<the recipe's alpha>)"
        )
    task_type = cfg.get("task_type")
    if task_type != TASK_TYPE:
        raise AdapterError(
            f"{cfg_path}: task_type is {task_type!r}, expected the string {TASK_TYPE!r} "
            "(verl 0.7.1's export writes the enum or nothing): run repair_adapter(dir)"
        )
    base = cfg.get("base_model_name_or_path") or None
    if expected_base is not None:
        if base is None:
            raise AdapterError(
                f"{cfg_path}: base_model_name_or_path is not set, expected {expected_base!r}: "
                f"run repair_adapter(dir, base_model={expected_base!r}) if it was trained on it"
            )
        if not _same_model(str(base), expected_base):
            raise AdapterError(
                f"{cfg_path}: base_model_name_or_path is {base!r}, expected {expected_base!r}: "
                "this adapter was trained on a different base model"
            )
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        targets = tuple(str(t) for t in targets)
    elif not isinstance(targets, str):
        targets = ()

    n = _check_tensors(d, None if cfg.get("rank_pattern") else r, allow_zero_tensors)
    return AdapterInfo(
        path=d.resolve(),
        r=r,
        lora_alpha=alpha,
        task_type=task_type,
        base_model=None if base is None else str(base),
        target_modules=targets,
        sha12=adapter_sha12(d),
        lora_tensors=n,
        weights_bytes=(d / ADAPTER_WEIGHTS).stat().st_size,
    )


# --------------------------------------------------------------------------- repair


def repair_adapter(
    path: str | os.PathLike,
    *,
    lora_alpha: float | None = None,
    base_model: str | None = None,
) -> list[str]:
    """Fix verl's adapter export in place and return what changed (empty: nothing). verl
    0.9.1's merger leaves only `base_model_name_or_path` null; 0.7.1's (and 0.9.1's on a
    checkpoint without `lora_train_meta.json`) also loses lora_alpha and task_type.

    - `task_type` missing, null or an enum spelling ("TaskType.CAUSAL_LM") -> "CAUSAL_LM";
      any other value is refused (it is not a causal-LM adapter).
    - `peft_type` missing, null or "PeftType.LORA" -> "LORA".
    - `lora_alpha` 0 / missing -> `lora_alpha`, which must then be given (the export lost
      it; only the training recipe knows it). A non-zero alpha is never overwritten.
    - `base_model_name_or_path` missing or null -> `base_model` when given; a different base
      already recorded is refused.
    - `target_modules` written as a set-like mapping is left alone; a set is not JSON.

    The config is rewritten atomically (temp file + rename) only when something changed.
    """
    d = _dir(path)
    cfg = _load_config(d)
    cfg_path = d / ADAPTER_CONFIG
    changes: list[str] = []

    task_type = cfg.get("task_type")
    if task_type != TASK_TYPE:
        if task_type is None or str(task_type) in _TASK_TYPE_ALIASES:
            cfg["task_type"] = TASK_TYPE
            changes.append(f"task_type: {task_type!r} -> {TASK_TYPE!r}")
        else:
            raise AdapterError(
                f"{cfg_path}: task_type is {task_type!r}; refusing to rewrite it to "
                f"{TASK_TYPE!r} (not a known spelling of a causal-LM adapter)"
            )

    peft_type = cfg.get("peft_type")
    if peft_type != PEFT_TYPE:
        if peft_type is None or str(peft_type) in _PEFT_TYPE_ALIASES:
            cfg["peft_type"] = PEFT_TYPE
            changes.append(f"peft_type: {peft_type!r} -> {PEFT_TYPE!r}")
        else:
            raise AdapterError(f"{cfg_path}: peft_type is {peft_type!r}; not a LoRA adapter")

    raw_alpha = cfg.get("lora_alpha")
    current_alpha = _number(raw_alpha)
    if current_alpha is None or current_alpha <= 0 or not math.isfinite(current_alpha):
        if lora_alpha is None:
            raise AdapterError(
                f"{cfg_path}: lora_alpha is {raw_alpha!r} and no value was given: "
                "pass repair_adapter(dir, lora_alpha=<the training recipe's lora_alpha>)"
            )
        value = _number(lora_alpha)
        if value is None or value <= 0 or not math.isfinite(value):
            raise AdapterError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
        new_alpha: int | float = int(value) if float(value).is_integer() else value
        cfg["lora_alpha"] = new_alpha
        changes.append(f"lora_alpha: {raw_alpha!r} -> {new_alpha!r}")

    if base_model is not None:
        recorded = cfg.get("base_model_name_or_path") or None
        if recorded is None:
            cfg["base_model_name_or_path"] = base_model
            changes.append(f"base_model_name_or_path: None -> {base_model!r}")
        elif not _same_model(str(recorded), base_model):
            raise AdapterError(
                f"{cfg_path}: base_model_name_or_path is {recorded!r}, not {base_model!r}; "
                "refusing to relabel an adapter trained on a different base"
            )

    if changes:
        atomic_write_text(cfg_path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return changes


# --------------------------------------------------------------------------- lineage


def write_lineage(path: str | os.PathLike, facts: Mapping[str, Any]) -> Path:
    """Write `lineage.json` (sorted keys, atomically). When the weights are present, their
    `adapter_sha12` / `adapter_name` are recorded too; given values must agree with them."""
    d = _dir(path)
    out = dict(facts)
    if (d / ADAPTER_WEIGHTS).is_file():
        sha = adapter_sha12(d)
        for key, value in (("adapter_sha12", sha), ("adapter_name", NAME_PREFIX + sha)):
            if key in out and out[key] != value:
                raise AdapterError(
                    f"{d}: lineage says {key}={out[key]!r} but the weights give {value!r}"
                )
            out[key] = value
    try:
        text = json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{d}: lineage facts are not JSON-serialisable: {exc}") from exc
    target = d / LINEAGE_FILE
    atomic_write_text(target, text + "\n")
    return target


def read_lineage(path: str | os.PathLike, *, required: bool = True) -> dict[str, Any]:
    """Read `lineage.json`. Missing: AdapterError when `required`, else `{}`. A recorded
    `adapter_sha12` that no longer matches the weights (stale lineage copied next to other
    weights) is an error."""
    d = _dir(path)
    target = d / LINEAGE_FILE
    if not target.is_file():
        if required:
            raise AdapterError(
                f"{d}: missing {LINEAGE_FILE} (an adapter dropped for the sensor needs one; "
                "see docs/cluster.md)"
            )
        return {}
    try:
        facts = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{target}: not valid JSON ({exc})") from exc
    if not isinstance(facts, dict):
        raise AdapterError(f"{target}: expected a JSON object, got {type(facts).__name__}")
    recorded = facts.get("adapter_sha12")
    if recorded is not None and (d / ADAPTER_WEIGHTS).is_file():
        actual = adapter_sha12(d)
        if recorded != actual:
            raise AdapterError(
                f"{target}: records adapter_sha12={recorded!r} but the weights hash to "
                f"{actual!r} (lineage belongs to other weights)"
            )
    return facts


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m coop_dag.training.adapters validate|repair|name DIR``: check an adapter before
    dropping it into the adapters directory, fix a verl export (0.9.1: its null base model;
    0.7.1: lora_alpha and task_type too), print its served name."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m coop_dag.training.adapters", description=main.__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a PEFT adapter directory (and its lineage)")
    check.add_argument("dir")
    check.add_argument("--base", help="the base model it must name")
    fix = sub.add_parser("repair", help="fix verl's export in place (base model; alpha if 0)")
    fix.add_argument("dir")
    fix.add_argument("--lora-alpha", type=float, help="the training recipe's lora_alpha")
    fix.add_argument("--base", help="set base_model_name_or_path when missing")
    name = sub.add_parser("name", help="print student-<sha12>")
    name.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            info = validate_adapter(args.dir, expected_base=args.base)
            lineage = read_lineage(args.dir, required=False)
            out = {**info.as_metadata(), "lineage": lineage or None}
            print(json.dumps(out, indent=2, sort_keys=True))
            if not lineage:
                print(f"warning: no {LINEAGE_FILE}; the sensor needs one", file=sys.stderr)
        elif args.command == "repair":
            changes = repair_adapter(args.dir, lora_alpha=args.lora_alpha, base_model=args.base)
            print("\n".join(changes) if changes else "nothing to repair")
        else:
            print(adapter_name(args.dir))
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
