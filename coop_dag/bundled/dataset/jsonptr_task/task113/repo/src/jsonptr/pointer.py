"""JSON Pointer (RFC 6901): `/a/b/0` addresses a value inside a JSON document."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidPointer, PointerResolutionError

_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE_RE = re.compile(r"~(?![01])")


def escape(token: str) -> str:
    """Escape one reference token: `~` -> `~0`, `/` -> `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    if _BAD_ESCAPE_RE.search(token):
        raise InvalidPointer(token, "'~' must be followed by 0 or 1")
    return token.replace("~1", "/").replace("~0", "~")


@dataclass(frozen=True)
class JsonPointer:
    """A parsed pointer: its unescaped reference tokens. The empty pointer is the root."""

    parts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> JsonPointer:
        if text == "":
            return cls()
        if not text.startswith("/"):
            raise InvalidPointer(text, "must be empty or start with '/'")
        try:
            return cls(tuple(unescape(token) for token in text[1:].split("/")))
        except InvalidPointer as exc:
            raise InvalidPointer(text, str(exc)) from None

    def __str__(self) -> str:
        return "".join("/" + escape(part) for part in self.parts)

    @staticmethod
    def array_index(array: list, token: str, allow_end: bool = False) -> int:
        """The list index `token` names; `allow_end` also accepts `len(array)` (for inserts)."""
        if not _INDEX_RE.fullmatch(token):
            raise PointerResolutionError(f"invalid array index {token!r}")
        index = int(token)
        limit = len(array) if allow_end else len(array) - 1
        if index > limit:
            raise PointerResolutionError(f"array index {index} out of range")
        return index

    def _step(self, node: Any, token: str) -> Any:
        if isinstance(node, dict):
            if token not in node:
                raise PointerResolutionError(f"no member {token!r} at {self}")
            return node[token]
        if isinstance(node, list):
            return node[self.array_index(node, token)]
        raise PointerResolutionError(f"cannot descend into {type(node).__name__} at {self}")

    def resolve(self, document: Any) -> Any:
        node = document
        for token in self.parts:
            node = self._step(node, token)
        return node

    def exists(self, document: Any) -> bool:
        try:
            self.resolve(document)
        except PointerResolutionError:
            return False
        return True

    def parent_and_key(self, document: Any) -> tuple[Any, str]:
        """The container the last token refers into, and that token."""
        if not self.parts:
            raise PointerResolutionError("the root has no parent")
        return JsonPointer(self.parts[:-1]).resolve(document), self.parts[-1]
