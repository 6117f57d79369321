import re

import pytest

from coop_dag.variants import (
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
    from coop_dag.tito import TitoConfig
    from coop_dag.train import get_recipe

    variants = load_variants()
    up12, up1 = variants["templated-all-turns"], variants["templated-up1"]
    assert (up12.upweight, up1.upweight) == (12, 1)
    apart = ("name", "upweight", "description", "raw")
    same = [k for k in vars(up1) if k not in apart]
    assert [getattr(up12, k) for k in same] == [getattr(up1, k) for k in same]
    recipe = get_recipe(up1.recipe)
    assert recipe.max_turn is None or recipe.max_turn >= TitoConfig().upweight_turns
    assert recipe.upweight_mode == "duplicate" and not recipe.packing


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
