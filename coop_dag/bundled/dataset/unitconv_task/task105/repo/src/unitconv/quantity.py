"""A value paired with a unit, plus parsing and formatting helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .convert import UnitLike, convert, resolve_unit
from .errors import ParseError
from .registry import Unit, UnitRegistry

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_QUANTITY_RE = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>[^\s\d.].*?)\s*$")


@dataclass(frozen=True)
class Quantity:
    """An amount of some unit, e.g. ``Quantity(3.0, <Unit km>)``."""

    value: float
    unit: Unit

    def to(self, target: UnitLike, registry: UnitRegistry | None = None) -> "Quantity":
        """Return this quantity expressed in ``target`` units."""
        unit = resolve_unit(target, registry)
        return Quantity(convert(self.value, self.unit, unit), unit)

    def __str__(self) -> str:
        return format_quantity(self)


def parse_quantity(text: str, registry: UnitRegistry | None = None) -> Quantity:
    """Parse strings such as ``"3.5 km"``, ``"-40 degF"`` or ``"12kg"``."""
    match = _QUANTITY_RE.match(text)
    if match is None:
        raise ParseError(f"cannot parse quantity: {text!r}")
    value = float(match.group("number"))
    unit = resolve_unit(match.group("unit"), registry)
    return Quantity(value, unit)


def format_quantity(
    quantity: Quantity, precision: int | None = None, use_name: bool = False
) -> str:
    """Render a quantity as ``"3.5 km"`` (or ``"3.50 kilometers"`` with names)."""
    if precision is None:
        number = f"{quantity.value:g}"
    else:
        number = f"{quantity.value:.{precision}f}"
    if not use_name:
        return f"{number} {quantity.unit.symbol}"
    head, per, tail = quantity.unit.name.partition(" per ")
    if quantity.value != 1 and not head.endswith("s"):
        head += "s"
    return f"{number} {head}{per}{tail}"
