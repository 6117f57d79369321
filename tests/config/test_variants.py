import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coop_dag.config.variants import (
    DEFAULT_VARIANTS_FILE,
    VariantError,
    default_variant_name,
    get_variant,
    load_variants,
    variants_file,
)


def test_shipped_variants_load_with_defaults_merged():
    variants = load_variants()
    assert default_variant_name() == "templated"
    assert variants["templated"].upweight == 12
    assert variants["templated-up1"].upweight == 1
    assert variants["templated"].teacher_kind == "templated"
    assert variants["gemini-api"].teacher["api_key_env"] == "GEMINI_API_KEY"
    # nested defaults merge key by key
    assert variants["templated"].rollout["max_steps"] >= 10
    assert variants["templated"].strip == {"think": True, "steering": True}


def test_the_upweight_contrast_trains_turns_beyond_the_upweighted_ones():
    """x12 vs x1 only differ when the recipe trains later turns too and draws upweighted copies
    as copies; otherwise both variants train the same adapter."""
    from coop_dag.tito.config import TitoConfig
    from coop_dag.training.recipes import get_recipe

    variants = load_variants()
    up12, up1 = variants["templated-all-turns"], variants["templated-up1"]
    assert (up12.upweight, up1.upweight) == (12, 1)
    apart = ("name", "upweight", "description", "raw")
    same = [k for k in vars(up1) if k not in apart]
    assert [getattr(up12, k) for k in same] == [getattr(up1, k) for k in same]
    recipe = get_recipe(up1.recipe)
    assert recipe.max_turn is None or recipe.max_turn >= TitoConfig().upweight_turns
    assert recipe.upweight_mode == "duplicate" and not recipe.packing


def test_seed_variants_differ_only_by_seed_and_train_distinct_runs():
    """The variant's seed reaches the training recipe and so the run key: each seed its own
    adapter (and a rerun of one seed resumes only its run)."""
    from types import SimpleNamespace

    from coop_dag.training.contract import run_key_for
    from coop_dag.training.recipes import recipe_for

    variants = load_variants()
    seeds = [variants[n] for n in ("templated", "templated-seed1", "templated-seed2")]
    assert [v.seed for v in seeds] == [0, 1, 2]
    apart = ("name", "seed", "description", "raw")
    same = [k for k in vars(seeds[0]) if k not in apart]
    assert all([getattr(v, k) for k in same] == [getattr(seeds[0], k) for k in same] for v in seeds)
    recipes = [recipe_for(v) for v in seeds]
    assert [r.seed for r in recipes] == [0, 1, 2]
    assert recipe_for(seeds[1], "embedded-all-turns").seed == 1  # a recipe override keeps it
    student = SimpleNamespace(
        name="s", tokenizer_sha256="t", chat_template_sha256="c", manifest={}, model_dir="m"
    )
    keys = {run_key_for(student, r, "train-sha", "val-sha") for r in recipes}
    assert len(keys) == 3


def _write(tmp_path, body):
    path = tmp_path / "variants.yaml"
    path.write_text(body)
    return path


def test_unknown_variant_names_it_and_the_known_ones():
    with pytest.raises(VariantError, match=r"unknown variant 'nope'.*templated"):
        get_variant("nope")


def test_unknown_teacher_kind_is_named(tmp_path):
    path = _write(tmp_path, "variants:\n  x:\n    student: s\n    teacher: {kind: oracle}\n")
    with pytest.raises(VariantError, match=r"variant 'x'.*unknown teacher kind 'oracle'"):
        load_variants(path)


def test_api_teacher_needs_a_model(tmp_path):
    path = _write(tmp_path, "variants:\n  x:\n    student: s\n    teacher: {kind: litellm}\n")
    with pytest.raises(VariantError, match="needs field 'model'"):
        load_variants(path)


def test_bad_upweight_and_missing_file(tmp_path):
    path = _write(
        tmp_path,
        "variants:\n  x:\n    student: s\n    upweight: 0\n    teacher: {kind: templated}\n",
    )
    with pytest.raises(VariantError, match="upweight"):
        load_variants(path)
    with pytest.raises(VariantError, match="not found"):
        load_variants(tmp_path / "missing.yaml")


def test_variants_file_comes_from_the_environment(tmp_path, monkeypatch):
    path = _write(
        tmp_path, "variants:\n  only:\n    student: tiny-qwen3\n    teacher: {kind: templated}\n"
    )
    monkeypatch.setenv("COOP_DAG_VARIANTS", str(path))
    assert variants_file() == path
    assert list(load_variants()) == ["only"]
    assert default_variant_name() == "only"
    assert get_variant("only").student == "tiny-qwen3"
    monkeypatch.setenv("COOP_DAG_VARIANTS", "")  # empty counts as unset
    assert variants_file() == DEFAULT_VARIANTS_FILE
    missing = tmp_path / "nope" / "variants.yaml"
    monkeypatch.setenv("COOP_DAG_VARIANTS", str(missing))
    with pytest.raises(VariantError, match=rf"not found: {re.escape(str(missing))}.*COOP_DAG_VARI"):
        load_variants()
    with pytest.raises(VariantError, match=re.escape(str(missing))):
        default_variant_name()


# --------------------------------------------------------------------------- validated at load

GOOD = "    student: tiny-qwen3\n    teacher: {kind: templated}\n"


@pytest.mark.parametrize(
    "body, needles",
    [
        (  # a student that is not in configs/students.yaml
            "variants:\n  v1:\n    student: gpt-17\n    teacher: {kind: templated}\n",
            ["variant 'v1'", "field 'student'", "'gpt-17'", "smollm2-135m"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    recipe: fast-and-loose\n",
            ["variant 'v1'", "field 'recipe'", "'fast-and-loose'", "embedded-default"],
        ),
        (
            f"default_variant: v2\nvariants:\n  v1:\n{GOOD}",
            ["default_variant", "'v2'", "known: v1"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    rollout: {{max_steps: thirty}}\n",
            ["variant 'v1'", "field 'rollout.max_steps'", "an integer >= 1", "'thirty'"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    rollout: {{concurrency: 0}}\n",
            ["variant 'v1'", "field 'rollout.concurrency'", "got 0"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    rollout: {{command_timeout: -5}}\n",
            ["variant 'v1'", "field 'rollout.command_timeout'", "> 0", "got -5"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    student_rollout: {{wait_timeout: -1.5}}\n",
            ["variant 'v1'", "field 'student_rollout.wait_timeout'", "got -1.5"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    rollout: {{max_tokens: 64}}\n",  # student_rollout only
            ["variant 'v1'", "field 'rollout.max_tokens'", "not a known field", "got 64"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    upweigth: 12\n",
            ["variant 'v1'", "field 'upweigth'", "not a known field", "got 12"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    steering: 'no'\n",
            ["variant 'v1'", "field 'steering'", "true or false", "got 'no'"],
        ),
        (
            f"variants:\n  v1:\n{GOOD}    teacher: {{kind: templated, temprature: 0.2}}\n",
            ["variant 'v1'", "field 'teacher.temprature'", "not a known field"],
        ),
        (  # a bad default is reported on the first variant that inherits it
            f"defaults:\n  rollout: {{max_steps: 0}}\nvariants:\n  v1:\n{GOOD}",
            ["variant 'v1'", "field 'rollout.max_steps'", "got 0", "inherited from defaults"],
        ),
        (
            f"variant:\n  v1:\n{GOOD}",
            ["unknown top-level key", "'variant'"],
        ),
    ],
)
def test_a_bad_variants_file_is_rejected_naming_file_variant_field_value(tmp_path, body, needles):
    path = _write(tmp_path, body)
    with pytest.raises(VariantError) as err:
        load_variants(path)
        default_variant_name(path)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_default_variant_name_checks_the_name(tmp_path):
    path = _write(tmp_path, f"default_variant: nope\nvariants:\n  v1:\n{GOOD}")
    with pytest.raises(VariantError, match=r"default_variant 'nope' is not a variant"):
        default_variant_name(path)


def test_a_valid_file_loads_and_hf_students_need_no_entry(tmp_path):
    path = _write(
        tmp_path,
        "variants:\n  v1:\n    student: hf:/models/x\n    teacher: {kind: templated}\n"
        "    rollout: {max_steps: 5, concurrency: 1, command_timeout: 2.5,"
        " max_context_tokens: null}\n",
    )
    variant = load_variants(path)["v1"]
    assert variant.rollout["command_timeout"] == 2.5 and variant.student == "hf:/models/x"


def test_recipe_fields_are_checked_naming_file_recipe_field_value(tmp_path):
    from coop_dag.training.errors import RecipeError
    from coop_dag.training.recipes import load_recipes

    bad = tmp_path / "recipes.yaml"
    for body, needles in [
        ("recipes:\n  r1:\n    max_steps: thirty\n", ["field 'max_steps'", "'thirty'"]),
        ("recipes:\n  r1:\n    save_steps: 0\n", ["field 'save_steps'", "got 0"]),
        ("recipes:\n  r1:\n    warmup_steps: -1\n", ["field 'warmup_steps'", "got -1"]),
        ("recipes:\n  r1:\n    packing: 'yes'\n", ["field 'packing'", "'yes'"]),
        ("recipes:\n  r1:\n    learning_rate: fast\n", ["field 'learning_rate'", "'fast'"]),
        ("defaults:\n  lora_r: 0\nrecipes:\n  r1: {}\n", ["field 'lora_r'", "got 0"]),
        ("recipe:\n  r1: {}\n", ["unknown top-level key"]),
    ]:
        bad.write_text(body)
        with pytest.raises(RecipeError) as err:
            load_recipes(bad)
        message = str(err.value)
        assert str(bad) in message, message
        assert "r1" in message or "top-level" in message, message
        for needle in needles:
            assert needle in message, (needle, message)


def test_student_entries_reject_unknown_fields_and_missing_templates(tmp_path):
    from coop_dag.training.students import StudentError, load_registry

    path = tmp_path / "students.yaml"
    entry = "    kind: hf\n    path: models/x\n"
    for body, needles in [
        (f"students:\n  s1:\n{entry}    gguf_fle: x.gguf\n", ["student 's1'", "gguf_fle"]),
        (f"students:\n  s1:\n{entry}    chat_template: nope.jinja\n", ["'nope.jinja'"]),
        ("students:\n  s1:\n    kind: random_init\n    package: p\n    module: m\n"
         "    config: {hidden_size: 8}\n    seed: zero\n", ["field 'seed'", "'zero'"]),
    ]:  # fmt: skip
        path.write_text(body)
        with pytest.raises(StudentError) as err:
            load_registry(path)
        message = str(err.value)
        assert str(path) in message
        for needle in needles:
            assert needle in message, (needle, message)


def test_definitions_validate_fails_naming_the_bad_variants_file(tmp_path):
    """The code location does not load with a bad variants file: `dagster definitions
    validate` fails and says which file, variant, field and value."""
    root = Path(__file__).resolve().parents[2]
    path = _write(tmp_path, f"variants:\n  v1:\n{GOOD}    rollout: {{concurrency: 0}}\n")
    env = {
        **os.environ,
        "COOP_DAG_VARIANTS": str(path),
        "DAGSTER_HOME": str(tmp_path / "dagster-home"),
    }
    (tmp_path / "dagster-home").mkdir()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert (
        f"VariantError: {path}: variant 'v1': field 'rollout.concurrency' must be an integer "
        ">= 1, got 0" in out
    ), out[-3000:]
