"""Unit definitions and the registry that resolves names and symbols."""

from __future__ import annotations

from dataclasses import dataclass

from . import dimensions as dims
from .dimensions import Dimension
from .errors import UnitError, UnknownUnitError


@dataclass(frozen=True)
class Unit:
    """A unit defined relative to the SI base unit of its dimension.

    ``base = value * factor + offset``; ``offset`` is non-zero only for affine
    scales such as degrees Celsius.
    """

    name: str
    symbol: str
    dimension: Dimension
    factor: float
    offset: float = 0.0
    aliases: tuple[str, ...] = ()

    def to_base(self, value: float) -> float:
        return value * self.factor + self.offset

    def from_base(self, value: float) -> float:
        return (value - self.offset) / self.factor

    @property
    def is_affine(self) -> bool:
        return self.offset != 0.0

    def __repr__(self) -> str:
        return f"<Unit {self.symbol}>"


class UnitRegistry:
    """Holds units and looks them up by name, symbol or alias."""

    def __init__(self) -> None:
        self._units: list[Unit] = []
        self._lookup: dict[str, Unit] = {}

    def define(
        self,
        name: str,
        symbol: str,
        dimension: Dimension,
        factor: float,
        offset: float = 0.0,
        aliases: tuple[str, ...] = (),
    ) -> Unit:
        if factor == 0:
            raise UnitError(f"unit {name!r} must have a non-zero factor")
        unit = Unit(name, symbol, dimension, float(factor), float(offset), tuple(aliases))
        keys = (name, symbol, *unit.aliases)
        for key in keys:
            if key in self._lookup:
                raise UnitError(f"{key!r} is already defined")
        for key in keys:
            self._lookup[key] = unit
        self._units.append(unit)
        return unit

    def get(self, key: str) -> Unit:
        """Return the unit called ``key`` (a name, symbol or alias)."""
        key = key.strip()
        try:
            return self._lookup[key]
        except KeyError:
            pass
        raise UnknownUnitError(key)

    def __contains__(self, key: str) -> bool:
        try:
            self.get(key)
        except UnknownUnitError:
            return False
        return True

    def units(self, dimension: Dimension | None = None) -> list[Unit]:
        """All defined units, optionally only those of one dimension."""
        return [u for u in self._units if dimension is None or u.dimension == dimension]


_DEFAULT_UNITS = [
    # name, symbol, dimension, factor, offset, aliases
    ("meter", "m", dims.LENGTH, 1.0, 0.0, ("metre",)),
    ("kilometer", "km", dims.LENGTH, 1000.0, 0.0, ("kilometre",)),
    ("centimeter", "cm", dims.LENGTH, 0.01, 0.0, ("centimetre",)),
    ("millimeter", "mm", dims.LENGTH, 0.001, 0.0, ("millimetre",)),
    ("inch", "in", dims.LENGTH, 0.0254, 0.0, ()),
    ("foot", "ft", dims.LENGTH, 0.3048, 0.0, ("feet",)),
    ("yard", "yd", dims.LENGTH, 0.9144, 0.0, ()),
    ("mile", "mi", dims.LENGTH, 1609.344, 0.0, ()),
    ("kilogram", "kg", dims.MASS, 1.0, 0.0, ()),
    ("gram", "g", dims.MASS, 0.001, 0.0, ()),
    ("pound", "lb", dims.MASS, 0.45359237, 0.0, ("lbs",)),
    ("ounce", "oz", dims.MASS, 0.028349523125, 0.0, ()),
    ("second", "s", dims.TIME, 1.0, 0.0, ("sec",)),
    ("minute", "min", dims.TIME, 60.0, 0.0, ()),
    ("hour", "h", dims.TIME, 3600.0, 0.0, ("hr",)),
    ("day", "d", dims.TIME, 86400.0, 0.0, ()),
    ("kelvin", "K", dims.TEMPERATURE, 1.0, 0.0, ()),
    ("celsius", "degC", dims.TEMPERATURE, 1.0, 273.15, ("°C",)),
    ("fahrenheit", "degF", dims.TEMPERATURE, 5 / 9, 273.15 - 32 * 5 / 9, ("°F",)),
    ("liter", "L", dims.VOLUME, 0.001, 0.0, ("litre",)),
    ("milliliter", "mL", dims.VOLUME, 1e-6, 0.0, ("millilitre",)),
    ("gallon", "gal", dims.VOLUME, 0.003785411784, 0.0, ()),
    ("meter per second", "m/s", dims.VELOCITY, 1.0, 0.0, ()),
    ("kilometer per hour", "km/h", dims.VELOCITY, 1000 / 3600, 0.0, ("kph",)),
    ("mile per hour", "mph", dims.VELOCITY, 1609.344 / 3600, 0.0, ()),
    ("joule", "J", dims.ENERGY, 1.0, 0.0, ()),
    ("calorie", "cal", dims.ENERGY, 4.184, 0.0, ()),
    ("kilowatt hour", "kWh", dims.ENERGY, 3.6e6, 0.0, ()),
    ("watt", "W", dims.POWER, 1.0, 0.0, ()),
    ("horsepower", "hp", dims.POWER, 745.69987158227022, 0.0, ()),
]


def default_registry() -> UnitRegistry:
    """Build a fresh registry with common SI, imperial and US units."""
    registry = UnitRegistry()
    for name, symbol, dimension, factor, offset, aliases in _DEFAULT_UNITS:
        registry.define(name, symbol, dimension, factor, offset, aliases)
    return registry


_DEFAULT: UnitRegistry | None = None


def get_default_registry() -> UnitRegistry:
    """The shared registry used when no registry is passed explicitly."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = default_registry()
    return _DEFAULT
