"""unitconv: convert physical quantities between units."""

from .convert import convert, convertible
from .dimensions import Dimension
from .errors import DimensionMismatchError, ParseError, UnitError, UnknownUnitError
from .quantity import Quantity, format_quantity, parse_quantity
from .registry import Unit, UnitRegistry, default_registry, get_default_registry

__all__ = [
    "Dimension",
    "DimensionMismatchError",
    "ParseError",
    "Quantity",
    "Unit",
    "UnitError",
    "UnitRegistry",
    "UnknownUnitError",
    "convert",
    "convertible",
    "default_registry",
    "format_quantity",
    "get_default_registry",
    "parse_quantity",
]
