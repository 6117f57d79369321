"""Variants: named teacher x student x data-recipe combinations from `configs/variants.yaml`.

``COOP_DAG_VARIANTS`` (a path; empty counts as unset) points the code location at another
variants file -- a test's fixture, a researcher's own sweep. The partitions are built from it
when the code location is imported, so set it before `dagster dev` / the run starts.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coop_dag import CONFIG_DIR

VARIANTS_ENV = "COOP_DAG_VARIANTS"
DEFAULT_VARIANTS_FILE = CONFIG_DIR / "variants.yaml"
# served: a model of configs/students.yaml served by the serving resource (vLLM; on the CPU in
# the embedded default), token ids captured -- the native-TITO contract of the seed's Phase B.
TEACHER_KINDS = ("templated", "litellm", "openai_compatible", "served")


def variants_file() -> Path:
    """The variants file in use: ``$COOP_DAG_VARIANTS``, else ``configs/variants.yaml``."""
    value = os.environ.get(VARIANTS_ENV, "").strip()
    return Path(value) if value else DEFAULT_VARIANTS_FILE


VARIANTS_FILE = variants_file()  # as of import (what assets/partitions.py was built from)


class VariantError(ValueError):
    """A bad or unknown variant; the message names the file, variant and field."""


@dataclass(frozen=True)
class Variant:
    name: str
    teacher: dict[str, Any]
    steering: bool
    student: str
    upweight: int
    strip: dict[str, bool]
    recipe: str
    seed: int
    rollout: dict[str, Any]
    student_rollout: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def teacher_kind(self) -> str:
        return self.teacher["kind"]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _build(name: str, spec: dict, source: Path) -> Variant:
    where = f"{source}: variant '{name}'"
    teacher = spec.get("teacher")
    if not isinstance(teacher, dict) or "kind" not in teacher:
        raise VariantError(f"{where}: field 'teacher' must be a mapping with a 'kind'")
    if teacher["kind"] not in TEACHER_KINDS:
        raise VariantError(
            f"{where}: unknown teacher kind '{teacher['kind']}' (known: {', '.join(TEACHER_KINDS)})"
        )
    if teacher["kind"] != "templated" and not teacher.get("model"):
        raise VariantError(f"{where}: teacher kind '{teacher['kind']}' needs field 'model'")
    upweight = spec.get("upweight", 1)
    if not isinstance(upweight, int) or upweight < 1:
        raise VariantError(f"{where}: field 'upweight' must be an integer >= 1, got {upweight!r}")
    try:
        return Variant(
            name=name,
            teacher=teacher,
            steering=bool(spec.get("steering", True)),
            student=str(spec["student"]),
            upweight=upweight,
            strip={k: bool(v) for k, v in spec.get("strip", {}).items()},
            recipe=str(spec.get("recipe", "embedded-default")),
            seed=int(spec.get("seed", 0)),
            rollout=dict(spec.get("rollout", {})),
            student_rollout=dict(spec.get("student_rollout", {})),
            description=str(spec.get("description", "")),
            raw=spec,
        )
    except KeyError as err:
        raise VariantError(f"{where}: missing field {err}") from None


def _existing(path: Path | str | None) -> Path:
    """`path`, or the file in use; a missing file is a VariantError naming it (and the
    environment variable when that is where it came from)."""
    resolved = variants_file() if path is None else Path(path)
    if not resolved.is_file():
        via = (
            f" (set by ${VARIANTS_ENV})"
            if path is None and resolved != DEFAULT_VARIANTS_FILE
            else ""
        )
        raise VariantError(f"variants file not found: {resolved}{via}")
    return resolved


def load_variants(path: Path | str | None = None) -> dict[str, Variant]:
    """Every variant of `path` (default: :func:`variants_file`), defaults merged in."""
    path = _existing(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise VariantError(f"{path}: invalid YAML: {err}") from None
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise VariantError(f"{path}: needs a non-empty 'variants' mapping")
    defaults = doc.get("defaults", {}) or {}
    return {
        name: _build(name, _merge(defaults, spec or {}), path) for name, spec in variants.items()
    }


def default_variant_name(path: Path | str | None = None) -> str:
    path = _existing(path)
    doc = yaml.safe_load(path.read_text()) or {}
    return doc.get("default_variant") or next(iter(doc["variants"]))


def get_variant(name: str, path: Path | str | None = None) -> Variant:
    path = _existing(path)
    variants = load_variants(path)
    if name not in variants:
        raise VariantError(
            f"unknown variant '{name}' in {path} (known: {', '.join(sorted(variants))})"
        )
    return variants[name]
