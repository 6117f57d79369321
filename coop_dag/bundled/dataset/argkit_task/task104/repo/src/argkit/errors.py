"""Exception hierarchy for argkit."""

from __future__ import annotations

from typing import Iterable


class ArgkitError(Exception):
    """Base class for every error raised by argkit."""


class SpecError(ArgkitError):
    """Raised when an option or argument is declared incorrectly."""


class UsageError(ArgkitError):
    """Raised when a command line cannot be parsed."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def format_message(self) -> str:
        if self.param:
            return f"{self.param}: {self.message}"
        return self.message

    def __str__(self) -> str:
        return self.format_message()


class MissingParameterError(UsageError):
    """A required option or argument was not supplied."""


class BadParameterError(UsageError):
    """A value could not be converted or validated."""


class NoSuchOptionError(UsageError):
    """An option name that the parser does not know was used."""

    def __init__(self, name: str, possibilities: Iterable[str] = ()) -> None:
        self.name = name
        self.possibilities = sorted(possibilities)
        message = f"no such option: {name}"
        if self.possibilities:
            message += f" (did you mean {', '.join(self.possibilities)}?)"
        super().__init__(message)
