"""Exceptions raised by unitconv."""


class UnitError(Exception):
    """Base class for all unitconv errors."""


class UnknownUnitError(UnitError, LookupError):
    """A unit name or symbol is not defined in the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown unit: {name!r}")
        self.name = name


class DimensionMismatchError(UnitError):
    """Two units measure different things (e.g. metres and seconds)."""

    def __init__(self, source, target) -> None:
        super().__init__(
            f"cannot convert {source.symbol} [{source.dimension}] "
            f"to {target.symbol} [{target.dimension}]"
        )
        self.source = source
        self.target = target


class ParseError(UnitError, ValueError):
    """A quantity string could not be parsed."""
