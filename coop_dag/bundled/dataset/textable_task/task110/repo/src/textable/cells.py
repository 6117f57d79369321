"""Cells: turning values into text and measuring it in terminal columns."""

from __future__ import annotations

import unicodedata

ALIGNMENTS = ("left", "right", "center")


def display_width(text: str) -> int:
    """Terminal columns `text` occupies: wide/fullwidth characters count 2, combining 0."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def format_cell(value: object, float_format: str = ".2f") -> str:
    """None -> "", booleans -> "yes"/"no", floats with `float_format`, the rest with str()."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def pad(text: str, width: int, align: str = "left") -> str:
    """Pad `text` with spaces to `width` display columns; longer text is returned as is."""
    if align not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {align!r} (expected one of {ALIGNMENTS})")
    gap = width - display_width(text)
    if gap <= 0:
        return text
    if align == "left":
        return text + " " * gap
    if align == "right":
        return " " * gap + text
    left = gap // 2
    return " " * left + text + " " * (gap - left)
