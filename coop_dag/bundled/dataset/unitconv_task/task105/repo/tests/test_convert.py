import pytest

from unitconv import DimensionMismatchError, convert, convertible, default_registry


@pytest.mark.parametrize(
    "value,source,target,expected",
    [
        (5, "km", "m", 5000),
        (1, "mi", "km", 1.609344),
        (12, "in", "ft", 1),
        (2, "lb", "kg", 0.90718474),
        (90, "min", "h", 1.5),
        (100, "degC", "degF", 212),
        (-40, "degF", "degC", -40),
        (0, "K", "degC", -273.15),
        (1, "gal", "L", 3.785411784),
        (36, "km/h", "m/s", 10),
        (1, "kWh", "J", 3.6e6),
        (1, "hp", "W", 745.69987158),
    ],
)
def test_convert(value, source, target, expected):
    assert convert(value, source, target) == pytest.approx(expected)


def test_same_unit_is_identity():
    assert convert(3, "m", "metre") == 3.0


def test_dimension_mismatch():
    with pytest.raises(DimensionMismatchError) as info:
        convert(1, "m", "s")
    assert str(info.value) == "cannot convert m [length] to s [time]"


def test_convertible():
    assert convertible("mph", "km/h")
    assert not convertible("J", "W")


def test_units_objects_and_custom_registry():
    reg = default_registry()
    assert convert(1, reg.get("yd"), "ft", registry=reg) == pytest.approx(3)
