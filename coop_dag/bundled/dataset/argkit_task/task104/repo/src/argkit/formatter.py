"""Render usage and help text for a parser."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from .spec import Argument, Option

if TYPE_CHECKING:
    from .parser import Parser

INDENT = 2
COLUMN_GAP = 2
MAX_LEFT = 24


def format_usage(parser: "Parser") -> str:
    """Return a one-line ``usage: prog [-h] ...`` summary."""
    parts = [f"usage: {parser.prog}"]
    for option in parser.options:
        token = min(option.names, key=len)
        if option.takes_value:
            token = f"{token} {option.metavar}"
        parts.append(token if option.required else f"[{token}]")
    for argument in parser.arguments:
        parts.append(argument.metavar if argument.required else f"[{argument.metavar}]")
    return " ".join(parts)


def _option_row(option: Option) -> tuple[str, str]:
    left = ", ".join(sorted(option.names, key=len))
    if option.takes_value:
        left = f"{left} {option.metavar}"
    return left, option.help


def _argument_row(argument: Argument) -> tuple[str, str]:
    return argument.metavar, argument.help


def _format_rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Lay out ``(left, help)`` pairs in two columns, wrapping the help text."""
    if not rows:
        return []
    left_width = min(max(len(left) for left, _ in rows), MAX_LEFT)
    help_col = INDENT + left_width + COLUMN_GAP
    wrapped_width = max(width - help_col, 20)
    lines: list[str] = []
    for left, text in rows:
        wrapped = textwrap.wrap(text, wrapped_width) or [""]
        prefix = " " * INDENT + left
        if len(left) > left_width:
            lines.append(prefix)
            lines.extend(" " * help_col + chunk for chunk in wrapped if chunk)
            continue
        lines.append(prefix.ljust(help_col) + wrapped[0])
        lines.extend(" " * help_col + chunk for chunk in wrapped[1:])
    return [line.rstrip() for line in lines]


def format_help(parser: "Parser", width: int = 79) -> str:
    """Return the full help page: usage, description, arguments and options."""
    lines = [format_usage(parser)]
    if parser.description:
        lines.append("")
        lines.extend(textwrap.wrap(parser.description, width))
    if parser.arguments:
        lines.append("")
        lines.append("arguments:")
        lines.extend(_format_rows([_argument_row(a) for a in parser.arguments], width))
    if parser.options:
        lines.append("")
        lines.append("options:")
        lines.extend(_format_rows([_option_row(o) for o in parser.options], width))
    return "\n".join(lines) + "\n"
