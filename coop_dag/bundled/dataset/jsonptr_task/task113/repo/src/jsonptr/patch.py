"""JSON Patch (RFC 6902): apply a list of operations to a document."""

from __future__ import annotations

import copy
from typing import Any

from .errors import JsonPointerError, PatchError, PointerResolutionError
from .pointer import JsonPointer


def _add(doc: Any, pointer: JsonPointer, value: Any) -> Any:
    if not pointer.parts:
        return value
    parent, key = pointer.parent_and_key(doc)
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        parent.insert(JsonPointer.array_index(parent, key, allow_end=True), value)
    else:
        raise PointerResolutionError(f"cannot add into {type(parent).__name__} at {pointer}")
    return doc


def _remove(doc: Any, pointer: JsonPointer) -> Any:
    if not pointer.parts:
        raise PointerResolutionError("cannot remove the root")
    parent, key = pointer.parent_and_key(doc)
    pointer.resolve(doc)  # the target must exist
    if isinstance(parent, dict):
        del parent[key]
    else:
        del parent[JsonPointer.array_index(parent, key)]
    return doc


def _replace(doc: Any, pointer: JsonPointer, value: Any) -> Any:
    if not pointer.parts:
        return value
    pointer.resolve(doc)
    return _add(_remove(doc, pointer), pointer, value)


# Members each operation needs besides "op" and "path".
REQUIRED: dict[str, tuple[str, ...]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
}


def _apply_one(doc: Any, op: str, pointer: JsonPointer, operation: dict) -> Any:
    if op == "add":
        return _add(doc, pointer, copy.deepcopy(operation["value"]))
    if op == "remove":
        return _remove(doc, pointer)
    return _replace(doc, pointer, copy.deepcopy(operation["value"]))


def apply_patch(document: Any, patch: list[dict], in_place: bool = False) -> Any:
    """Apply every operation in order and return the result; the input is left untouched
    unless `in_place`. A failing operation raises PatchError naming its index."""
    doc = document if in_place else copy.deepcopy(document)
    for index, operation in enumerate(patch):
        op = operation.get("op") if isinstance(operation, dict) else None
        if op not in REQUIRED:
            raise PatchError(index, op, "unknown operation")
        for member in ("path", *REQUIRED[op]):
            if member not in operation:
                raise PatchError(index, op, f"missing member {member!r}")
        try:
            pointer = JsonPointer.parse(operation["path"])
            doc = _apply_one(doc, op, pointer, operation)
        except JsonPointerError as exc:
            raise PatchError(index, op, str(exc)) from exc
    return doc
