import pytest

from verspec import InvalidSpecifier, Specifier, SpecifierSet


@pytest.mark.parametrize(
    "spec, version, expected",
    [
        (">=1.2.0", "1.2.0", True),
        (">=1.2.0", "1.1.9", False),
        ("<2.0.0", "1.9.9", True),
        ("!=1.5.0", "1.5.0", False),
        ("1.5.0", "1.5.0+build", True),
        (">1.0.0", "1.0.0", False),
    ],
)
def test_single_specifier(spec, version, expected):
    assert Specifier.parse(spec).contains(version) is expected


def test_specifier_set_is_a_conjunction():
    spec = SpecifierSet(">=1.2.0, <2.0.0")
    assert "1.5.0" in spec
    assert "2.0.0" not in spec
    assert "1.1.0" not in spec
    assert str(spec) == ">=1.2.0, <2.0.0"


def test_empty_set_matches_everything():
    assert SpecifierSet("").contains("0.0.1")


def test_filter_keeps_order():
    spec = SpecifierSet(">=1.0.0")
    assert [str(v) for v in spec.filter(["1.2.0", "0.9.0", "1.0.0"])] == ["1.2.0", "1.0.0"]


@pytest.mark.parametrize("text", [">=", "=>1.0.0", ">=1.0", "~>1.0.0"])
def test_invalid_specifiers(text):
    with pytest.raises(InvalidSpecifier):
        Specifier.parse(text)
