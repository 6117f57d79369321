"""Date ranges: stepping iterators and an inclusive ``DateRange`` value type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterable, Iterator

from .business import is_business_day
from .errors import DateHelpError
from .parsing import parse_date


def date_range(start: date, end: date, step: int = 1) -> Iterator[date]:
    """Yield dates from ``start`` up to but excluding ``end``, ``step`` days apart.

    A negative ``step`` counts down from ``start`` to just above ``end``.
    """
    if step == 0:
        raise ValueError("step must not be zero")
    delta = timedelta(days=step)
    current = start
    while (current < end) if step > 0 else (current > end):
        yield current
        current += delta


@dataclass(frozen=True)
class DateRange:
    """An inclusive span of days, ``start`` to ``end``."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise DateHelpError(f"range ends before it starts: {self.start} > {self.end}")

    @classmethod
    def from_string(cls, text: str, dayfirst: bool = True) -> "DateRange":
        """Parse ``"2024-03-01..2024-03-10"`` (any supported date format on each side)."""
        first, sep, last = text.partition("..")
        if not sep:
            raise DateHelpError(f"expected 'START..END', got {text!r}")
        return cls(parse_date(first, dayfirst), parse_date(last, dayfirst))

    def __len__(self) -> int:
        return (self.end - self.start).days + 1

    def __iter__(self) -> Iterator[date]:
        return date_range(self.start, self.end + timedelta(days=1))

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day <= self.end

    def overlaps(self, other: "DateRange") -> bool:
        return self.start <= other.end and other.start <= self.end

    def intersection(self, other: "DateRange") -> "DateRange | None":
        if not self.overlaps(other):
            return None
        return DateRange(max(self.start, other.start), min(self.end, other.end))

    def business_days(self, holidays: Iterable[date] = ()) -> list[date]:
        holidays = frozenset(holidays)
        return [day for day in self if is_business_day(day, holidays)]

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"
