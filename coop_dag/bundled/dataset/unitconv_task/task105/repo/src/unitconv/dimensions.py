"""Physical dimensions as products of powers of base dimensions."""

from __future__ import annotations

from typing import Mapping

BASE_DIMENSIONS = ("length", "mass", "time", "temperature", "current", "amount")


class Dimension:
    """An immutable mapping of base dimension -> integer exponent.

    ``Dimension(length=1, time=-1)`` is a velocity; ``Dimension()`` is dimensionless.
    """

    __slots__ = ("_exponents",)

    def __init__(self, exponents: Mapping[str, int] | None = None, **kwargs: int) -> None:
        merged = dict(exponents or {})
        merged.update(kwargs)
        for name in merged:
            if name not in BASE_DIMENSIONS:
                raise ValueError(f"unknown base dimension: {name!r}")
        self._exponents = tuple(sorted((k, int(v)) for k, v in merged.items() if v))

    @classmethod
    def base(cls, name: str) -> "Dimension":
        return cls({name: 1})

    def exponents(self) -> dict[str, int]:
        return dict(self._exponents)

    @property
    def is_dimensionless(self) -> bool:
        return not self._exponents

    def __mul__(self, other: "Dimension") -> "Dimension":
        result = self.exponents()
        for name, power in other._exponents:
            result[name] = result.get(name, 0) + power
        return Dimension(result)

    def __truediv__(self, other: "Dimension") -> "Dimension":
        return self * other ** -1

    def __pow__(self, power: int) -> "Dimension":
        return Dimension({name: exp * power for name, exp in self._exponents})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dimension) and self._exponents == other._exponents

    def __hash__(self) -> int:
        return hash(self._exponents)

    def __str__(self) -> str:
        if not self._exponents:
            return "dimensionless"
        return "*".join(name if exp == 1 else f"{name}^{exp}" for name, exp in self._exponents)

    def __repr__(self) -> str:
        return f"Dimension({str(self)!r})"


DIMENSIONLESS = Dimension()
LENGTH = Dimension.base("length")
MASS = Dimension.base("mass")
TIME = Dimension.base("time")
TEMPERATURE = Dimension.base("temperature")
AREA = LENGTH**2
VOLUME = LENGTH**3
VELOCITY = LENGTH / TIME
ENERGY = MASS * LENGTH**2 / TIME**2
POWER = ENERGY / TIME
