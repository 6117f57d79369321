"""verspec: semantic versions and version constraints."""

from .errors import InvalidSpecifier, InvalidVersion, VersionError
from .resolve import max_satisfying, min_satisfying, sort_versions
from .specifier import Specifier, SpecifierSet
from .version import Version

__all__ = [
    "InvalidSpecifier",
    "InvalidVersion",
    "Specifier",
    "SpecifierSet",
    "Version",
    "VersionError",
    "max_satisfying",
    "min_satisfying",
    "sort_versions",
]
