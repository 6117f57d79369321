import pytest

from confload import (
    Config,
    DictSource,
    IniSource,
    MissingKeyError,
    ValidationError,
    deep_merge,
    load,
    validate,
)


def test_deep_merge_nested():
    base = {"db": {"host": "a", "port": 1}, "debug": False}
    over = {"db": {"host": "b"}, "debug": True}
    assert deep_merge(base, over) == {"db": {"host": "b", "port": 1}, "debug": True}
    assert base["db"]["host"] == "a"


def test_load_layers_later_wins():
    cfg = load(
        IniSource(text="[db]\nhost = ini\nport = 5432\n"),
        DictSource({"db": {"host": "override"}}),
    )
    assert cfg.get("db.host") == "override"
    assert cfg.get_int("db.port") == 5432


def test_get_default_and_contains():
    cfg = Config({"a": {"b": 1}})
    assert "a.b" in cfg
    assert "a.c" not in cfg
    assert cfg.get("a.c", 7) == 7


def test_require_missing():
    with pytest.raises(MissingKeyError):
        Config({}).require("x.y")


def test_typed_getters():
    cfg = Config({"n": "3", "f": "1.5", "b": "yes", "l": "a, b,,c", "s": 4})
    assert cfg.get_int("n") == 3
    assert cfg.get_float("f") == 1.5
    assert cfg.get_bool("b") is True
    assert cfg.get_list("l") == ["a", "b", "c"]
    assert cfg.get_str("s") == "4"


def test_typed_getter_errors():
    cfg = Config({"n": "three", "b": "maybe"})
    with pytest.raises(ValidationError) as info:
        cfg.get_int("n")
    assert info.value.key == "n"
    with pytest.raises(ValidationError):
        cfg.get_bool("b")
    with pytest.raises(MissingKeyError):
        cfg.get_int("missing")
    assert cfg.get_int("missing", 5) == 5


def test_section():
    cfg = Config({"db": {"host": "h"}, "x": 1})
    assert cfg.section("db").get("host") == "h"
    with pytest.raises(ValidationError):
        cfg.section("x")


def test_validate_schema():
    cfg = Config({"port": "80", "debug": "no"})
    assert validate(cfg, {"port": int, "debug": bool}) == {"port": 80, "debug": False}
    with pytest.raises(ValidationError) as info:
        validate(cfg, {"host": str})
    assert "required" in str(info.value)
