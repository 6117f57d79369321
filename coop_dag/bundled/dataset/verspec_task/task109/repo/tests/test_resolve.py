from verspec import SpecifierSet, Version, max_satisfying, min_satisfying, sort_versions

VERSIONS = ["1.2.0", "2.0.0", "1.9.3", "1.10.0", "0.9.0"]


def test_sort_versions():
    assert [str(v) for v in sort_versions(VERSIONS)] == [
        "0.9.0", "1.2.0", "1.9.3", "1.10.0", "2.0.0",
    ]
    assert str(sort_versions(VERSIONS, reverse=True)[0]) == "2.0.0"


def test_max_and_min_satisfying():
    assert max_satisfying(VERSIONS, ">=1.0.0, <2.0.0") == Version(1, 10, 0)
    assert min_satisfying(VERSIONS, SpecifierSet(">=1.0.0")) == Version(1, 2, 0)
    assert max_satisfying(VERSIONS, ">=3.0.0") is None
