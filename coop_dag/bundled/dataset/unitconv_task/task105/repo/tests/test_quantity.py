import pytest

from unitconv import ParseError, Quantity, UnknownUnitError, format_quantity, get_default_registry, parse_quantity

reg = get_default_registry()


@pytest.mark.parametrize(
    "text,value,symbol",
    [
        ("3.5 km", 3.5, "km"),
        ("12kg", 12.0, "kg"),
        ("-40 degF", -40.0, "degF"),
        ("  .5 h ", 0.5, "h"),
        ("100 km/h", 100.0, "km/h"),
        ("1 meter per second", 1.0, "m/s"),
    ],
)
def test_parse(text, value, symbol):
    q = parse_quantity(text)
    assert q.value == value
    assert q.unit.symbol == symbol


@pytest.mark.parametrize("text", ["", "km", "12", "abc 3"])
def test_parse_errors(text):
    with pytest.raises(ParseError):
        parse_quantity(text)


def test_parse_unknown_unit():
    with pytest.raises(UnknownUnitError):
        parse_quantity("3 parsecs")


def test_to():
    q = parse_quantity("72 degF").to("degC")
    assert q.unit is reg.get("degC")
    assert q.value == pytest.approx(22.2222222)


def test_format():
    assert format_quantity(Quantity(3.5, reg.get("km"))) == "3.5 km"
    assert str(Quantity(1500.0, reg.get("m"))) == "1500 m"
    assert format_quantity(Quantity(2, reg.get("mi")), precision=2) == "2.00 mi"


def test_format_with_names():
    assert format_quantity(Quantity(1, reg.get("km")), use_name=True) == "1 kilometer"
    assert format_quantity(Quantity(3, reg.get("km")), use_name=True) == "3 kilometers"
    assert format_quantity(Quantity(20, reg.get("degC")), use_name=True) == "20 celsius"
    assert format_quantity(Quantity(9, reg.get("km/h")), use_name=True) == "9 kilometers per hour"
