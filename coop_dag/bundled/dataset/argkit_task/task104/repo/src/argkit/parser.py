"""The command-line parser."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import MissingParameterError, NoSuchOptionError, SpecError, UsageError
from .spec import Argument, Option


class Parser:
    """Collects option and argument specs and parses ``argv`` lists."""

    def __init__(self, prog: str, description: str = "") -> None:
        self.prog = prog
        self.description = description
        self.options: list[Option] = []
        self.arguments: list[Argument] = []
        self._by_name: dict[str, Option] = {}

    def add_option(self, *names: str, **kwargs: Any) -> Option:
        option = Option(names=tuple(names), **kwargs)
        for name in option.names:
            if name in self._by_name:
                raise SpecError(f"duplicate option name: {name}")
        if any(existing.dest == option.dest for existing in self.options):
            raise SpecError(f"duplicate destination: {option.dest}")
        for name in option.names:
            self._by_name[name] = option
        self.options.append(option)
        return option

    def add_argument(self, name: str, **kwargs: Any) -> Argument:
        argument = Argument(name=name, **kwargs)
        if self.arguments and not self.arguments[-1].required and argument.required:
            raise SpecError("a required argument cannot follow an optional one")
        self.arguments.append(argument)
        return argument

    def _lookup(self, name: str) -> Option:
        try:
            return self._by_name[name]
        except KeyError:
            stem = name.lstrip("-")[:2]
            close = [
                known for known in self._by_name if stem and known.lstrip("-").startswith(stem)
            ]
            raise NoSuchOptionError(name, close) from None

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """Parse ``argv`` (without the program name) into a ``dest -> value`` dict."""
        values: dict[str, Any] = {}
        positionals: list[str] = []
        tokens = list(argv)
        index = 0
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if token == "--":
                positionals.extend(tokens[index:])
                break
            if not token.startswith("-") or token == "-":
                positionals.append(token)
                continue
            name, sep, inline = token.partition("=")
            option = self._lookup(name)
            if option.is_flag:
                if sep:
                    raise UsageError("flag does not take a value", param=name)
                values[option.dest] = True
                continue
            if sep:
                raw = inline
            elif index < len(tokens):
                raw = tokens[index]
                index += 1
            else:
                raise UsageError("option requires a value", param=name)
            values[option.dest] = option.convert(raw)
        self._bind_arguments(positionals, values)
        self._apply_defaults(values)
        return values

    def _bind_arguments(self, positionals: list[str], values: dict[str, Any]) -> None:
        if len(positionals) > len(self.arguments):
            extra = positionals[len(self.arguments)]
            raise UsageError(f"unexpected extra argument {extra!r}")
        for argument, raw in zip(self.arguments, positionals):
            values[argument.dest] = argument.convert(raw)

    def _apply_defaults(self, values: dict[str, Any]) -> None:
        for option in self.options:
            if option.dest in values:
                continue
            if option.required:
                raise MissingParameterError("missing required option", param=option.display_name)
            values[option.dest] = option.default
        for argument in self.arguments:
            if argument.dest in values:
                continue
            if argument.required:
                raise MissingParameterError("missing required argument", param=argument.metavar)
            values[argument.dest] = argument.default

    def format_usage(self) -> str:
        from .formatter import format_usage

        return format_usage(self)

    def format_help(self, width: int = 79) -> str:
        from .formatter import format_help

        return format_help(self, width=width)
