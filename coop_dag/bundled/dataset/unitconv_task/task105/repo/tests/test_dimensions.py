import pytest

from unitconv import Dimension
from unitconv.dimensions import AREA, DIMENSIONLESS, ENERGY, LENGTH, TIME, VELOCITY


def test_algebra():
    assert LENGTH * LENGTH == AREA
    assert LENGTH / TIME == VELOCITY
    assert VELOCITY * TIME == LENGTH
    assert (LENGTH / LENGTH).is_dimensionless
    assert LENGTH ** 0 == DIMENSIONLESS


def test_keyword_construction_and_zero_exponents():
    assert Dimension(length=1, time=-1) == VELOCITY
    assert Dimension(length=1, mass=0) == LENGTH
    assert Dimension({"length": 2}).exponents() == {"length": 2}


def test_unknown_base_dimension():
    with pytest.raises(ValueError):
        Dimension(colour=1)


def test_hash_and_str():
    assert len({Dimension(length=1), LENGTH}) == 1
    assert str(VELOCITY) == "length*time^-1"
    assert str(ENERGY) == "length^2*mass*time^-2"
    assert str(DIMENSIONLESS) == "dimensionless"
    assert repr(LENGTH) == "Dimension('length')"
