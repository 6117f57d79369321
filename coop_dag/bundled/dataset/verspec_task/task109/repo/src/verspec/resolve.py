"""Choosing versions from a list: sorting and best matches for a constraint."""

from __future__ import annotations

from collections.abc import Iterable

from .specifier import SpecifierSet
from .version import Version


def _as_set(spec: SpecifierSet | str) -> SpecifierSet:
    return spec if isinstance(spec, SpecifierSet) else SpecifierSet(spec)


def sort_versions(versions: Iterable[Version | str], reverse: bool = False) -> list[Version]:
    """Parse and sort by precedence; equal versions keep their input order."""
    parsed = [v if isinstance(v, Version) else Version.parse(v) for v in versions]
    return sorted(parsed, reverse=reverse)


def max_satisfying(versions: Iterable[Version | str], spec: SpecifierSet | str) -> Version | None:
    """The highest version the constraint allows, or None."""
    matching = _as_set(spec).filter(versions)
    return max(matching) if matching else None


def min_satisfying(versions: Iterable[Version | str], spec: SpecifierSet | str) -> Version | None:
    """The lowest version the constraint allows, or None."""
    matching = _as_set(spec).filter(versions)
    return min(matching) if matching else None
