import pytest

from argkit import (
    MissingParameterError,
    NoSuchOptionError,
    Parser,
    SpecError,
    UsageError,
)


@pytest.fixture
def parser():
    p = Parser("copy", description="Copy files.")
    p.add_option("-n", "--count", type=int, default=1, help="Number of copies.")
    p.add_option("-v", "--verbose", is_flag=True, help="Print progress.")
    p.add_option("--mode", default="fast")
    p.add_argument("source")
    p.add_argument("target", default="out")
    return p


def test_defaults(parser):
    assert parser.parse(["a.txt"]) == {
        "count": 1,
        "verbose": False,
        "mode": "fast",
        "source": "a.txt",
        "target": "out",
    }


def test_values_and_flags(parser):
    values = parser.parse(["-v", "--count", "3", "a.txt", "b.txt", "--mode=slow"])
    assert values["verbose"] is True
    assert values["count"] == 3
    assert values["mode"] == "slow"
    assert (values["source"], values["target"]) == ("a.txt", "b.txt")


def test_double_dash_ends_options(parser):
    values = parser.parse(["--", "-weird-name"])
    assert values["source"] == "-weird-name"


def test_last_value_wins(parser):
    assert parser.parse(["-n", "2", "-n", "5", "x"])["count"] == 5


def test_missing_required_argument(parser):
    with pytest.raises(MissingParameterError) as info:
        parser.parse([])
    assert info.value.param == "SOURCE"


def test_missing_required_option():
    p = Parser("deploy")
    p.add_option("--env", required=True)
    with pytest.raises(MissingParameterError):
        p.parse([])
    assert p.parse(["--env", "prod"]) == {"env": "prod"}


def test_unknown_option_suggests(parser):
    with pytest.raises(NoSuchOptionError) as info:
        parser.parse(["--verbsoe", "x"])
    assert "--verbose" in info.value.possibilities
    assert "did you mean --verbose" in str(info.value)


def test_option_requires_value(parser):
    with pytest.raises(UsageError, match="requires a value"):
        parser.parse(["x", "--mode"])


def test_flag_rejects_inline_value(parser):
    with pytest.raises(UsageError, match="does not take a value"):
        parser.parse(["--verbose=yes", "x"])


def test_extra_argument(parser):
    with pytest.raises(UsageError, match="unexpected extra argument 'c'"):
        parser.parse(["a", "b", "c"])


def test_duplicate_names_rejected(parser):
    with pytest.raises(SpecError):
        parser.add_option("-v", "--version", is_flag=True)
    with pytest.raises(SpecError):
        parser.add_option("--other", dest="count")


def test_required_argument_cannot_follow_optional(parser):
    with pytest.raises(SpecError):
        parser.add_argument("extra")


def test_usage_error_exit_code():
    assert UsageError("boom").exit_code == 2
