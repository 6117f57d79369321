"""Declarative specifications for options and positional arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import BadParameterError, SpecError


def _identifier(name: str) -> str:
    """Turn ``--dry-run`` into ``dry_run``."""
    return name.lstrip("-").replace("-", "_")


def _convert(type_: Callable[[str], Any], raw: str, param: str) -> Any:
    """Convert ``raw`` with ``type_``, reporting failures as usage errors."""
    try:
        return type_(raw)
    except (TypeError, ValueError) as exc:
        type_name = getattr(type_, "__name__", "value")
        raise BadParameterError(f"{raw!r} is not a valid {type_name}", param=param) from exc


@dataclass
class Option:
    """An optional ``--name value`` / ``-n value`` parameter or a boolean flag."""

    names: tuple[str, ...]
    dest: str = ""
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    metavar: str = ""
    is_flag: bool = False
    required: bool = False

    def __post_init__(self) -> None:
        if not self.names:
            raise SpecError("an option needs at least one name")
        for name in self.names:
            if not name.startswith("-") or name in ("-", "--"):
                raise SpecError(f"invalid option name: {name!r}")
        if self.is_flag and self.required:
            raise SpecError("a flag cannot be required")
        if not self.dest:
            self.dest = _identifier(self.display_name)
        if not self.metavar:
            self.metavar = self.dest.upper()
        if self.is_flag and self.default is None:
            self.default = False

    @property
    def display_name(self) -> str:
        """The longest spelling, used in messages (``--verbose`` over ``-v``)."""
        return max(self.names, key=len)

    @property
    def takes_value(self) -> bool:
        return not self.is_flag

    def convert(self, raw: str) -> Any:
        return _convert(self.type, raw, self.display_name)


@dataclass
class Argument:
    """A positional parameter, bound in declaration order."""

    name: str
    type: Callable[[str], Any] = str
    help: str = ""
    required: bool = True
    default: Any = None

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("-"):
            raise SpecError(f"invalid argument name: {self.name!r}")
        if self.default is not None:
            self.required = False

    @property
    def dest(self) -> str:
        return _identifier(self.name)

    @property
    def metavar(self) -> str:
        return self.name.upper()

    def convert(self, raw: str) -> Any:
        return _convert(self.type, raw, self.metavar)
