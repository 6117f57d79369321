import pytest

from verspec import InvalidVersion, Version


def test_parse_full_version():
    v = Version.parse("1.2.3-alpha.1+build.5")
    assert v.release == (1, 2, 3)
    assert v.pre == ("alpha", "1")
    assert v.build == ("build", "5")
    assert str(v) == "1.2.3-alpha.1+build.5"


def test_leading_v_is_accepted():
    assert Version.parse("v2.0.0") == Version(2, 0, 0)


@pytest.mark.parametrize("text", ["1.2", "01.2.3", "1.2.3-", "1.2.3-01", "a.b.c", ""])
def test_invalid_versions(text):
    with pytest.raises(InvalidVersion):
        Version.parse(text)


def test_precedence_follows_semver():
    order = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
        "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0",
    ]
    parsed = [Version.parse(t) for t in order]
    assert sorted(reversed(parsed)) == parsed
    assert all(a < b for a, b in zip(parsed, parsed[1:]))


def test_build_metadata_is_ignored_for_equality():
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")
    assert len({Version.parse("1.0.0+a"), Version.parse("1.0.0")}) == 1


def test_bumps():
    v = Version.parse("1.2.3")
    assert str(v.bump_major()) == "2.0.0"
    assert str(v.bump_minor()) == "1.3.0"
    assert str(v.bump_patch()) == "1.2.4"
    assert str(Version.parse("1.2.4-rc.1").bump_patch()) == "1.2.4"
