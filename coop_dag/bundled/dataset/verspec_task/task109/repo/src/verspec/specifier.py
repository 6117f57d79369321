"""Version specifiers: constraints such as ``">=1.2.0, <2.0.0"``."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import InvalidSpecifier, InvalidVersion
from .version import Version

_SPEC_RE = re.compile(r"^\s*(?P<op>==|!=|>=|<=|>|<)?\s*(?P<version>\S+)\s*$")

_COMPARATORS: dict[str, Callable[[Version, Version], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def _as_version(value: Version | str) -> Version:
    return value if isinstance(value, Version) else Version.parse(value)


@dataclass(frozen=True)
class Specifier:
    """One comparison against a version; a bare version means ``==``."""

    operator: str
    version: Version

    @classmethod
    def parse(cls, text: str) -> Specifier:
        match = _SPEC_RE.match(text)
        if match is None:
            raise InvalidSpecifier(text)
        op = match.group("op") or "=="
        try:
            version = Version.parse(match.group("version"))
        except InvalidVersion as exc:
            raise InvalidSpecifier(text, exc.reason) from None
        return cls(op, version)

    def contains(self, version: Version | str) -> bool:
        version = _as_version(version)
        return _COMPARATORS[self.operator](version, self.version)

    def __str__(self) -> str:
        return f"{self.operator}{self.version}"


class SpecifierSet:
    """A conjunction of specifiers separated by commas; the empty set matches everything."""

    def __init__(self, text: str = "") -> None:
        parts = [part for part in text.split(",") if part.strip()]
        self.specifiers: tuple[Specifier, ...] = tuple(Specifier.parse(p) for p in parts)

    def contains(self, version: Version | str) -> bool:
        version = _as_version(version)
        return all(spec.contains(version) for spec in self.specifiers)

    def __contains__(self, version: Version | str) -> bool:
        return self.contains(version)

    def filter(self, versions: Iterable[Version | str]) -> list[Version]:
        """The versions this set contains, in the order given."""
        return [v for v in map(_as_version, versions) if self.contains(v)]

    def __str__(self) -> str:
        return ", ".join(str(spec) for spec in self.specifiers)

    def __repr__(self) -> str:
        return f"SpecifierSet({str(self)!r})"
