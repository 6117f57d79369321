"""Training recipes: ``configs/recipes.yaml`` (``defaults`` merged into each recipe), each a
validated, frozen `Recipe`. Both trainers (`training.train`, `training.verl`) and the variants
file read recipes from here; a recipe is part of a run's key (`contract.run_key_for`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from coop_dag import CONFIG_DIR
from coop_dag.tito.config import TRUNCATION_MODES as TRUNCATIONS
from coop_dag.tito.config import UPWEIGHT_MODES
from coop_dag.training.errors import RecipeError

RECIPES_FILE = CONFIG_DIR / "recipes.yaml"
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


# Integer fields and their minimum (None: any integer); float fields (ints accepted).
_INT_FIELDS: dict[str, int | None] = {
    "lora_r": 1,
    "warmup_steps": 0,
    "max_steps": 0,
    "batch_size": 1,
    "grad_accum": 1,
    "max_length": 1,
    "seed": None,
    "save_steps": 1,
    "max_val_rows": 0,
    "torch_threads": 0,
}
_FLOAT_FIELDS = (
    "lora_alpha", "lora_dropout", "learning_rate", "weight_decay", "max_grad_norm", "epochs",
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """One entry of ``configs/recipes.yaml`` (see the file's header for every key)."""

    name: str
    description: str = ""
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 1e-3
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 2048
    truncation: str = "left"
    seed: int = 0
    upweight_mode: str = "weight"
    packing: bool = True
    max_turn: int | None = None
    save_steps: int = 5
    max_val_rows: int = 8
    bf16: bool = False
    torch_threads: int = 0

    def __post_init__(self) -> None:
        where = f"recipe '{self.name}'"

        def bad(key: str, why: str) -> RecipeError:
            return RecipeError(f"{where}: field '{key}' {why}, got {getattr(self, key)!r}")

        # Types first, so a value such as max_steps: 'thirty' is named, not a TypeError later.
        for key, minimum in _INT_FIELDS.items():
            value = getattr(self, key)
            need = "must be an integer" + (f" >= {minimum}" if minimum is not None else "")
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(key, need)
            if minimum is not None and value < minimum:
                raise bad(key, need)
        for key in _FLOAT_FIELDS:
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise bad(key, "must be a number")
        for key in ("packing", "bf16"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        if not isinstance(self.description, str):
            raise bad("description", "must be a string")
        targets = self.target_modules
        if not (
            isinstance(targets, str)
            or (isinstance(targets, tuple) and all(isinstance(t, str) for t in targets))
        ):
            raise bad("target_modules", "must be a string or a list of strings")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "must be >= 0")
        if not self.max_grad_norm > 0:
            raise bad("max_grad_norm", "must be > 0")
        if not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise bad("lora_r", "must be an integer >= 1")
        if not self.lora_alpha > 0:
            raise bad("lora_alpha", "must be > 0 (alpha 0 scales the LoRA delta to nothing)")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "must be > 0")
        if self.lr_scheduler not in SCHEDULERS:
            raise bad("lr_scheduler", f"must be one of {SCHEDULERS}")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise bad("epochs", "must be > 0 when max_steps is not set")
        for key in ("batch_size", "grad_accum", "max_length", "save_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be an integer >= 1")
        if self.truncation not in TRUNCATIONS:
            raise bad("truncation", f"must be one of {TRUNCATIONS}")
        if self.upweight_mode not in UPWEIGHT_MODES:
            raise bad("upweight_mode", f"must be one of {UPWEIGHT_MODES}")
        if self.max_turn is not None and (not isinstance(self.max_turn, int) or self.max_turn < 0):
            raise bad("max_turn", "must be null or an integer >= 0")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(out["target_modules"], tuple):
            out["target_modules"] = list(out["target_modules"])
        return out

    def replace(self, **overrides: Any) -> Recipe:
        return _recipe(self.name, {**self.to_json(), **overrides}, "<override>")


_RECIPE_KEYS = {f.name for f in fields(Recipe)}


def _recipe(name: str, raw: dict[str, Any], source: Any) -> Recipe:
    unknown = sorted(set(raw) - _RECIPE_KEYS - {"name"})
    if unknown:
        raise RecipeError(
            f"{source}: recipe '{name}': unknown key(s) {unknown} (known: {sorted(_RECIPE_KEYS)})"
        )
    values = {k: v for k, v in raw.items() if k != "name"}
    if isinstance(values.get("target_modules"), list):
        values["target_modules"] = tuple(str(t) for t in values["target_modules"])
    for key in ("learning_rate", "lora_alpha", "lora_dropout", "weight_decay", "epochs"):
        if (
            key in values
            and isinstance(values[key], int | str)
            and not isinstance(values[key], bool)
        ):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise RecipeError(
                    f"{source}: recipe '{name}': field '{key}' must be a number, "
                    f"got {values[key]!r}"
                ) from None
    try:
        return Recipe(name=name, **values)
    except RecipeError as err:  # name the file the bad value came from
        raise RecipeError(f"{source}: {err}") from None
    except TypeError as err:
        raise RecipeError(f"{source}: recipe '{name}': {err}") from None


def load_recipes(path: str | os.PathLike | None = None) -> dict[str, Recipe]:
    """All recipes of ``configs/recipes.yaml`` (or ``path``), defaults merged in."""
    source = Path(path) if path is not None else RECIPES_FILE
    try:
        doc = yaml.safe_load(source.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipes file not found: {source}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: invalid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise RecipeError(f"{source}: expected a mapping with a 'recipes' mapping")
    unknown = sorted(set(doc) - {"defaults", "recipes"})
    if unknown:
        raise RecipeError(
            f"{source}: unknown top-level key(s) {unknown} (known: defaults, recipes)"
        )
    recipes = doc.get("recipes")
    if not isinstance(recipes, dict) or not recipes:
        raise RecipeError(f"{source}: needs a non-empty 'recipes' mapping")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RecipeError(f"{source}: 'defaults' must be a mapping, got {defaults!r}")
    out = {}
    for name, spec in recipes.items():
        if spec is not None and not isinstance(spec, dict):
            raise RecipeError(f"{source}: recipe '{name}' must be a mapping, got {spec!r}")
        out[str(name)] = _recipe(str(name), {**defaults, **(spec or {})}, source)
    return out


def get_recipe(name: str, path: str | os.PathLike | None = None, **overrides: Any) -> Recipe:
    """The recipe called ``name``, with ``overrides`` applied (validated like the file)."""
    recipes = load_recipes(path)
    if name not in recipes:
        raise RecipeError(
            f"unknown recipe '{name}' in {path or RECIPES_FILE} (known: {', '.join(recipes)})"
        )
    recipe = recipes[name]
    return recipe.replace(**overrides) if overrides else recipe


def recipe_for(variant: Any, name: str = "") -> Recipe:
    """A variant's training recipe: ``name`` (an override, e.g. TrainingResource.recipe) or the
    variant's, with the variant's ``seed`` as the training seed. The seed is part of the recipe,
    so of the run key (:func:`run_key_for`): variants differing only by seed train distinct
    adapters, and a rerun of one seed resumes only its own run."""
    return get_recipe(name or variant.recipe, seed=int(variant.seed))
