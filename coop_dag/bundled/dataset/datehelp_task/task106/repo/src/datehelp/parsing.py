"""Parse and format dates in a few common notations."""

from __future__ import annotations

import re
from datetime import date
from typing import Callable

from .errors import DateParseError

MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)


def _month_number(name: str) -> int:
    """``"Mar"``, ``"march"`` or ``"Sept"`` -> 3 / 3 / 9."""
    lowered = name.lower().rstrip(".")
    for index, full in enumerate(MONTH_NAMES, start=1):
        if len(lowered) >= 3 and full.startswith(lowered):
            return index
    raise DateParseError(f"unknown month name: {name!r}")


def _iso(match: re.Match[str], dayfirst: bool) -> tuple[int, int, int]:
    return int(match["y"]), int(match["m"]), int(match["d"])


def _slashed(match: re.Match[str], dayfirst: bool) -> tuple[int, int, int]:
    first, second = int(match["a"]), int(match["b"])
    day, month = (first, second) if dayfirst else (second, first)
    return int(match["y"]), month, day


def _textual(match: re.Match[str], dayfirst: bool) -> tuple[int, int, int]:
    return int(match["y"]), _month_number(match["mon"]), int(match["d"])


# Extracts (year, month, day) from a match; the bool is ``dayfirst``.
_Fields = Callable[[re.Match[str], bool], tuple[int, int, int]]

_FORMATS: list[tuple[re.Pattern[str], _Fields]] = [
    # 2024-03-05
    (re.compile(r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"), _iso),
    # 05/03/2024 (day first) or 03/05/2024 (month first)
    (re.compile(r"(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4})"), _slashed),
    # Mar 5, 2024 / March 5 2024
    (re.compile(r"(?P<mon>[A-Za-z]+\.?)\s+(?P<d>\d{1,2}),?\s+(?P<y>\d{4})"), _textual),
]


def parse_date(text: str, dayfirst: bool = True) -> date:
    """Parse ``text`` in one of the supported formats:

    * ISO: ``2024-03-05``
    * slashed: ``05/03/2024``
    * textual: ``Mar 5, 2024`` or ``March 5 2024``

    ``dayfirst`` decides how ambiguous slashed dates such as ``03/04/2024`` are
    read: 3 April when true (the default), 4 March otherwise.
    """
    cleaned = text.strip()
    for pattern, fields in _FORMATS:
        match = pattern.fullmatch(cleaned)
        if match is None:
            continue
        year, month, day = fields(match, dayfirst)
        try:
            return date(year, month, day)
        except ValueError as exc:
            raise DateParseError(f"invalid date {text!r}: {exc}") from None
    raise DateParseError(f"unrecognised date format: {text!r}")


def format_date(day: date, style: str = "iso") -> str:
    """Format ``day`` in one of three styles.

    ``"iso"`` gives ``2024-03-05``, ``"long"`` gives ``March 5, 2024`` and
    ``"short"`` gives ``Mar 5``.
    """
    if style == "iso":
        return day.isoformat()
    month = MONTH_NAMES[day.month - 1].capitalize()
    if style == "long":
        return f"{month} {day.day}, {day.year}"
    if style == "short":
        return f"{month[:3]} {day.day}"
    raise ValueError(f"unknown style: {style!r}")
