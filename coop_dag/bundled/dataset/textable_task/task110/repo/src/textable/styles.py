"""Table styles: which characters draw separators and rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    """How a table is drawn.

    vertical   text between two columns (and the outer borders when `borders` is set)
    horizontal character repeated to draw a rule
    junction   text where a rule crosses a column separator
    borders    draw left and right borders
    frame      draw a rule above the header and below the last row
    padding    spaces on each side of a cell
    """

    name: str
    vertical: str
    horizontal: str
    junction: str
    borders: bool = False
    frame: bool = False
    padding: int = 0


STYLES: dict[str, Style] = {
    "plain": Style("plain", vertical="  ", horizontal="-", junction="  "),
    "grid": Style("grid", "|", "-", "+", borders=True, frame=True, padding=1),
    "pipe": Style("pipe", "|", "-", "|", borders=True, padding=1),
}


def get_style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r} (available: {', '.join(STYLES)})") from None
