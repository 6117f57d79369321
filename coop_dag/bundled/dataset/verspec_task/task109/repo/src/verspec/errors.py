"""Exceptions raised by verspec."""

from __future__ import annotations


class VersionError(ValueError):
    """Base class for every verspec error."""


class InvalidVersion(VersionError):
    """A string is not a semantic version."""

    def __init__(self, text: str, reason: str = "not a semantic version") -> None:
        super().__init__(f"invalid version {text!r}: {reason}")
        self.text = text
        self.reason = reason


class InvalidSpecifier(VersionError):
    """A string is not a version specifier."""

    def __init__(self, text: str, reason: str = "not a version specifier") -> None:
        super().__init__(f"invalid specifier {text!r}: {reason}")
        self.text = text
        self.reason = reason
