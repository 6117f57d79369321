"""Converters turn path segments into Python values and back."""

from __future__ import annotations

from urllib.parse import quote

from .errors import UnknownConverter


class Converter:
    """Base converter: a regex fragment plus two conversion hooks.

    ``to_python`` may raise ``ValueError`` to reject a segment that matched
    the regex; the route is then treated as not matching.
    """

    regex = r"[^/]+"

    def to_python(self, value: str):
        return value

    def to_url(self, value) -> str:
        return quote(str(value), safe="")


class StringConverter(Converter):
    """Any non-empty segment without a slash (the default)."""


class IntegerConverter(Converter):
    """Non-negative integers written with digits only."""

    regex = r"\d+"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a non-negative int, got {value!r}")
        return str(value)


class PathConverter(Converter):
    """Like the default converter but also accepts slashes."""

    regex = r"[^/].*?"

    def to_url(self, value) -> str:
        return quote(str(value), safe="/")


DEFAULT_CONVERTERS: dict[str, type[Converter]] = {
    "default": StringConverter,
    "string": StringConverter,
    "int": IntegerConverter,
    "path": PathConverter,
}


def get_converter(name: str, registry=None) -> Converter:
    """Instantiate the converter registered under ``name``."""
    registry = DEFAULT_CONVERTERS if registry is None else registry
    try:
        factory = registry[name]
    except KeyError:
        raise UnknownConverter(name) from None
    return factory()
