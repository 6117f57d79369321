"""jsonptr: JSON Pointer and JSON Patch."""

from .errors import InvalidPointer, JsonPointerError, PatchError, PointerResolutionError
from .patch import apply_patch
from .pointer import JsonPointer, escape, unescape

__all__ = [
    "InvalidPointer",
    "JsonPointer",
    "JsonPointerError",
    "PatchError",
    "PointerResolutionError",
    "apply_patch",
    "escape",
    "unescape",
]
