import pytest

from unitconv import UnitError, UnitRegistry, UnknownUnitError, default_registry, get_default_registry
from unitconv.dimensions import LENGTH, TEMPERATURE


def test_lookup_by_name_symbol_alias():
    reg = default_registry()
    assert reg.get("km") is reg.get("kilometer") is reg.get("kilometre")
    assert reg.get(" ft ") is reg.get("feet")
    assert reg.get("°C").name == "celsius"


def test_unknown_unit():
    reg = default_registry()
    with pytest.raises(UnknownUnitError) as info:
        reg.get("furlong")
    assert info.value.name == "furlong"
    assert isinstance(info.value, LookupError)
    assert "furlong" not in reg
    assert "mi" in reg


def test_lookup_is_exact():
    reg = default_registry()
    with pytest.raises(UnknownUnitError):
        reg.get("KM")
    with pytest.raises(UnknownUnitError):
        reg.get("MI")


def test_define_custom_units():
    reg = UnitRegistry()
    reg.define("meter", "m", LENGTH, 1)
    furlong = reg.define("furlong", "fur", LENGTH, 201.168, aliases=("furlongs",))
    assert reg.get("furlongs") is furlong
    assert reg.units() == [reg.get("m"), furlong]
    with pytest.raises(UnitError):
        reg.define("metre", "m", LENGTH, 1)
    with pytest.raises(UnitError):
        reg.define("nothing", "x", LENGTH, 0)


def test_units_by_dimension():
    temps = default_registry().units(TEMPERATURE)
    assert [u.symbol for u in temps] == ["K", "degC", "degF"]


def test_affine_units():
    reg = default_registry()
    assert reg.get("degC").is_affine
    assert not reg.get("K").is_affine
    assert reg.get("degC").to_base(0) == pytest.approx(273.15)


def test_default_registry_is_shared():
    assert get_default_registry() is get_default_registry()
    assert default_registry() is not default_registry()
