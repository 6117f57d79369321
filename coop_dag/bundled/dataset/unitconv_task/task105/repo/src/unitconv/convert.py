"""Converting plain numbers between units."""

from __future__ import annotations

from .errors import DimensionMismatchError
from .registry import Unit, UnitRegistry, get_default_registry

UnitLike = Unit | str


def resolve_unit(unit: UnitLike, registry: UnitRegistry | None = None) -> Unit:
    """Accept a :class:`Unit` or look a name/symbol up in ``registry``."""
    if isinstance(unit, Unit):
        return unit
    return (registry or get_default_registry()).get(unit)


def convertible(source: UnitLike, target: UnitLike, registry: UnitRegistry | None = None) -> bool:
    """True when both units measure the same dimension."""
    return resolve_unit(source, registry).dimension == resolve_unit(target, registry).dimension


def convert(
    value: float, source: UnitLike, target: UnitLike, registry: UnitRegistry | None = None
) -> float:
    """Convert ``value`` expressed in ``source`` units to ``target`` units."""
    src = resolve_unit(source, registry)
    dst = resolve_unit(target, registry)
    if src.dimension != dst.dimension:
        raise DimensionMismatchError(src, dst)
    if src == dst:
        return float(value)
    return dst.from_base(src.to_base(value))
