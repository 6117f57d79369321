import pytest

from argkit import Argument, BadParameterError, Option, SpecError


def test_option_dest_from_longest_name():
    option = Option(names=("-d", "--dry-run"))
    assert option.dest == "dry_run"
    assert option.metavar == "DRY_RUN"
    assert option.display_name == "--dry-run"


def test_option_explicit_dest_and_metavar():
    option = Option(names=("-o",), dest="output", metavar="FILE")
    assert option.dest == "output"
    assert option.metavar == "FILE"


@pytest.mark.parametrize("name", ["verbose", "-", "--"])
def test_invalid_option_names(name):
    with pytest.raises(SpecError):
        Option(names=(name,))


def test_option_needs_a_name():
    with pytest.raises(SpecError):
        Option(names=())


def test_flag_defaults_to_false_and_cannot_be_required():
    assert Option(names=("-v",), is_flag=True).default is False
    with pytest.raises(SpecError):
        Option(names=("-v",), is_flag=True, required=True)


def test_option_convert_reports_bad_value():
    option = Option(names=("--count",), type=int)
    assert option.convert("12") == 12
    with pytest.raises(BadParameterError) as info:
        option.convert("twelve")
    assert str(info.value) == "--count: 'twelve' is not a valid int"


def test_argument_defaults_make_it_optional():
    argument = Argument(name="dest-dir", default=".")
    assert argument.required is False
    assert argument.dest == "dest_dir"
    assert argument.metavar == "DEST-DIR"


def test_argument_rejects_option_like_name():
    with pytest.raises(SpecError):
        Argument(name="--name")
