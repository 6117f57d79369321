"""Variants: named teacher x student x data-recipe combinations from `configs/variants.yaml`.

``COOP_DAG_VARIANTS`` (a path; empty counts as unset) points the code location at another
variants file -- a test's fixture, a researcher's own sweep. The partitions are built from it
when the code location is imported, so set it before `dagster dev` / the run starts.

Everything is checked when the file is loaded -- that is, when the code location loads, so a
bad file fails `dagster definitions validate` instead of a run hours later: unknown keys,
types and ranges of every field and rollout limit (`VARIANT_FIELDS`, `TEACHER_FIELDS`,
`LIMIT_FIELDS`), `default_variant`, and that each variant's student and recipe exist (which
loads, and so checks, `configs/students.yaml` and `configs/recipes.yaml`). Errors name the
file, the variant, the field and the value.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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


class Spec(NamedTuple):
    """What one field accepts: `kind` int | number | bool | str | mapping, a lower bound
    (`exclusive`: strictly above it), null allowed or not."""

    kind: str
    minimum: float | None = None
    exclusive: bool = False
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` does not fit (a phrase for the error message), or None."""
        if value is None:
            return None if self.nullable else f"must be {self.describe()}"
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "mapping": isinstance(value, dict),
        }[self.kind]
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.exclusive else value >= self.minimum
        return None if ok else f"must be {self.describe()}"

    def describe(self) -> str:
        what = {
            "int": "an integer",
            "number": "a number",
            "bool": "true or false",
            "str": "a string",
            "mapping": "a mapping",
        }[self.kind]
        if self.minimum is not None:
            what += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        return what + (" or null" if self.nullable else "")


VARIANT_FIELDS: dict[str, Spec] = {
    "description": Spec("str"),
    "teacher": Spec("mapping"),
    "steering": Spec("bool"),
    "student": Spec("str"),
    "upweight": Spec("int", 1),
    "strip": Spec("mapping"),
    "recipe": Spec("str"),
    "seed": Spec("int"),
    "rollout": Spec("mapping"),
    "student_rollout": Spec("mapping"),
    "require_both_passed": Spec("bool"),
}
TEACHER_FIELDS: dict[str, Spec] = {
    "kind": Spec("str"),
    "model": Spec("str"),
    "api_base": Spec("str"),
    "api_key_env": Spec("str"),
    "capture_token_ids": Spec("bool"),
    "temperature": Spec("number", 0),
    "max_tokens": Spec("int", 1),
    "tokenizer_sha256": Spec("str"),
}
STRIP_FIELDS: dict[str, Spec] = {"think": Spec("bool"), "steering": Spec("bool")}
# Rollout limits (`rollout:` for the teacher, `student_rollout:` for held-out evaluation); see
# coop_dag.agent.rollouts.limits_from and coop_dag.agent.loop.AgentLimits.
LIMIT_FIELDS: dict[str, Spec] = {
    "max_steps": Spec("int", 1),
    "concurrency": Spec("int", 1),
    "command_timeout": Spec("number", 0, exclusive=True),
    "wait_timeout": Spec("number", 0, exclusive=True),
    "max_context_tokens": Spec("int", 1, nullable=True),
    "max_format_errors": Spec("int", 1),
}
STUDENT_LIMIT_FIELDS: dict[str, Spec] = {**LIMIT_FIELDS, "max_tokens": Spec("int", 1)}
SECTIONS: dict[str, dict[str, Spec]] = {
    "teacher": TEACHER_FIELDS,
    "strip": STRIP_FIELDS,
    "rollout": LIMIT_FIELDS,
    "student_rollout": STUDENT_LIMIT_FIELDS,
}
TOP_LEVEL_KEYS = ("defaults", "default_variant", "variants")


def _inherited(own: Mapping[str, Any], dotted: str) -> bool:
    """Whether `dotted` (e.g. 'rollout.max_steps') came from `defaults`, not the variant."""
    node: Any = own
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return False


def _check_fields(name: str, spec: dict, own: Mapping[str, Any], source: Path) -> None:
    """Unknown keys, types and ranges of a merged variant `spec` (`own`: the variant's own
    entry, to say when a bad value was inherited from `defaults`)."""

    def fail(dotted: str, why: str, value: Any) -> VariantError:
        origin = " (inherited from defaults)" if _inherited(own, dotted) else ""
        return VariantError(
            f"{source}: variant '{name}': field '{dotted}' {why}, got {value!r}{origin}"
        )

    def check(fields: dict[str, Spec], values: dict, prefix: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if key not in fields:
                raise fail(dotted, f"is not a known field (known: {', '.join(fields)})", value)
            why = fields[key].problem(value)
            if why:
                raise fail(dotted, why, value)

    check(VARIANT_FIELDS, spec, "")
    for section, fields in SECTIONS.items():
        if section in spec:
            check(fields, spec[section], f"{section}.")


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


def _build(name: str, spec: dict, source: Path, own: Mapping[str, Any] | None = None) -> Variant:
    where = f"{source}: variant '{name}'"
    _check_fields(name, spec, spec if own is None else own, source)
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


def _read(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise VariantError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise VariantError(f"{path}: expected a mapping with a 'variants' mapping")
    unknown = [key for key in doc if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise VariantError(
            f"{path}: unknown top-level key(s) {unknown} (known: {', '.join(TOP_LEVEL_KEYS)})"
        )
    return doc


def check_references(variants: Mapping[str, Variant], source: Path) -> None:
    """Each variant's student is in configs/students.yaml (or `hf:<dir>`) and its recipe in
    configs/recipes.yaml; loading both files validates them too. Otherwise the mistake would
    surface only when training starts, after the teacher rollouts."""
    from coop_dag.training.errors import RecipeError
    from coop_dag.training.recipes import RECIPES_FILE, load_recipes
    from coop_dag.training.students import HF_PREFIX, StudentError, load_registry

    try:
        registry = load_registry()
    except StudentError as err:
        raise VariantError(f"student registry: {err}") from None
    try:
        recipes = load_recipes()
    except RecipeError as err:
        raise VariantError(f"recipes: {err}") from None
    for variant in variants.values():
        where = f"{source}: variant '{variant.name}'"
        student = variant.student
        if student.startswith(HF_PREFIX):
            if not student[len(HF_PREFIX) :].strip():
                raise VariantError(f"{where}: field 'student' needs a directory: 'hf:<dir>'")
        elif student not in registry.students:
            raise VariantError(
                f"{where}: field 'student' names an unknown student {student!r} (known: "
                f"{', '.join(registry.names())}, or hf:<dir>; registry: {registry.source})"
            )
        if variant.recipe not in recipes:
            raise VariantError(
                f"{where}: field 'recipe' names an unknown recipe {variant.recipe!r} (known: "
                f"{', '.join(recipes)}; recipes: {RECIPES_FILE})"
            )


def load_variants(path: Path | str | None = None, *, references: bool = True) -> dict[str, Variant]:
    """Every variant of `path` (default: :func:`variants_file`), defaults merged in, each
    field checked; with `references`, students and recipes must exist (see module doc)."""
    path = _existing(path)
    doc = _read(path)
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise VariantError(f"{path}: needs a non-empty 'variants' mapping")
    defaults = doc.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise VariantError(f"{path}: 'defaults' must be a mapping, got {defaults!r}")
    out = {}
    for name, spec in variants.items():
        if spec is not None and not isinstance(spec, dict):
            raise VariantError(f"{path}: variant '{name}' must be a mapping, got {spec!r}")
        out[str(name)] = _build(str(name), _merge(defaults, spec or {}), path, spec or {})
    default = doc.get("default_variant")
    if default is not None and default not in out:
        raise VariantError(
            f"{path}: default_variant {default!r} is not a variant (known: {', '.join(out)})"
        )
    if references:
        check_references(out, path)
    return out


def default_variant_name(path: Path | str | None = None) -> str:
    path = _existing(path)
    doc = _read(path)
    default = doc.get("default_variant")
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise VariantError(f"{path}: needs a non-empty 'variants' mapping")
    if default is None:
        return str(next(iter(variants)))
    if default not in variants:
        raise VariantError(
            f"{path}: default_variant {default!r} is not a variant (known: "
            f"{', '.join(map(str, variants))})"
        )
    return str(default)


def get_variant(name: str, path: Path | str | None = None) -> Variant:
    path = _existing(path)
    variants = load_variants(path)
    if name not in variants:
        raise VariantError(
            f"unknown variant '{name}' in {path} (known: {', '.join(sorted(variants))})"
        )
    return variants[name]
