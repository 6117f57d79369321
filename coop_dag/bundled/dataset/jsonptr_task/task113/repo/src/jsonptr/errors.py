"""Exceptions raised by jsonptr."""

from __future__ import annotations


class JsonPointerError(ValueError):
    """Base class for jsonptr errors."""


class InvalidPointer(JsonPointerError):
    """A string is not a JSON Pointer."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid JSON pointer {text!r}: {reason}")
        self.text = text


class PointerResolutionError(JsonPointerError, LookupError):
    """A pointer does not resolve in a document."""


class PatchError(JsonPointerError):
    """A patch operation is malformed or cannot be applied."""

    def __init__(self, index: int, op: object, reason: str) -> None:
        super().__init__(f"patch operation {index} ({op}): {reason}")
        self.index = index
        self.op = op
