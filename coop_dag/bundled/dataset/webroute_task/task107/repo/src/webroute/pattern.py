"""Compilation of route rules such as ``/users/<int:user_id>``."""

from __future__ import annotations

import re
from urllib.parse import unquote

from .converters import get_converter
from .errors import BuildError, RouteError

_PARAM_RE = re.compile(
    r"<(?:(?P<converter>[A-Za-z_][A-Za-z0-9_]*):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>"
)


class Pattern:
    """A compiled route rule that can match paths and build URLs."""

    def __init__(self, rule: str, converters=None) -> None:
        if not rule.startswith("/"):
            raise RouteError(f"rule must start with '/': {rule!r}")
        self.rule = rule
        self.converters = {}
        self._parts: list[tuple[bool, str]] = []  # (is_param, text or name)
        regex = []
        pos = 0
        for m in _PARAM_RE.finditer(rule):
            regex.append(self._static(rule[pos : m.start()]))
            name = m.group("name")
            if name in self.converters:
                raise RouteError(f"duplicate parameter {name!r} in {rule!r}")
            converter = get_converter(m.group("converter") or "default", converters)
            self.converters[name] = converter
            self._parts.append((True, name))
            regex.append(f"(?P<{name}>{converter.regex})")
            pos = m.end()
        regex.append(self._static(rule[pos:]))
        self.regex = re.compile("^" + "".join(regex) + "$")

    def _static(self, text: str) -> str:
        if "<" in text or ">" in text:
            raise RouteError(f"malformed parameter in {self.rule!r}")
        if text:
            self._parts.append((False, text))
        return re.escape(text)

    def __repr__(self) -> str:
        return f"Pattern({self.rule!r})"

    @property
    def arguments(self) -> tuple[str, ...]:
        """Names of the parameters, in the order they appear in the rule."""
        return tuple(self.converters)

    def match(self, path: str):
        """Return the converted parameters if ``path`` matches, else ``None``."""
        m = self.regex.match(path)
        if m is None:
            return None
        params = {}
        for name, raw in m.groupdict().items():
            try:
                params[name] = self.converters[name].to_python(unquote(raw))
            except ValueError:
                return None
        return params

    def build(self, values: dict) -> str:
        """Build a path from ``values``; every parameter must be supplied."""
        missing = [name for name in self.converters if name not in values]
        if missing:
            raise BuildError(self.rule, "missing parameters: " + ", ".join(missing))
        out = []
        for is_param, item in self._parts:
            if not is_param:
                out.append(item)
                continue
            try:
                out.append(self.converters[item].to_url(values[item]))
            except ValueError as exc:
                raise BuildError(self.rule, f"bad value for {item!r}: {exc}") from exc
        return "".join(out)
