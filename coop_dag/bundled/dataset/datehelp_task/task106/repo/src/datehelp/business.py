"""Business-day arithmetic: weekdays, minus optional holidays."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Iterable

WEEKEND = frozenset({5, 6})  # Saturday and Sunday (date.weekday() numbering)
ONE_DAY = timedelta(days=1)


def is_business_day(day: date, holidays: Iterable[date] = ()) -> bool:
    """True when ``day`` is neither a weekend day nor one of ``holidays``."""
    return day.weekday() not in WEEKEND and day not in frozenset(holidays)


def next_business_day(day: date, holidays: Iterable[date] = ()) -> date:
    """The first business day strictly after ``day``."""
    holidays = frozenset(holidays)
    day += ONE_DAY
    while not is_business_day(day, holidays):
        day += ONE_DAY
    return day


def add_business_days(start: date, days: int, holidays: Iterable[date] = ()) -> date:
    """Move ``days`` business days forwards, or backwards when ``days`` is negative.

    Only the days stepped onto are counted, so adding one business day to a
    Friday or a Saturday both give the following Monday. ``days == 0`` returns
    ``start`` unchanged.
    """
    holidays = frozenset(holidays)
    step = ONE_DAY if days >= 0 else -ONE_DAY
    remaining = abs(days)
    current = start
    while remaining:
        current += step
        if is_business_day(current, holidays):
            remaining -= 1
    return current


def business_days_between(start: date, end: date, holidays: Iterable[date] = ()) -> int:
    """Count business days in the half-open interval ``[start, end)``.

    The result is negative when ``end`` is before ``start``.
    """
    if end < start:
        return -business_days_between(end, start, holidays)
    weeks, extra = divmod((end - start).days, 7)
    count = weeks * (7 - len(WEEKEND))
    tail_start = start + timedelta(weeks=weeks)
    for offset in range(extra):
        if (tail_start + timedelta(days=offset)).weekday() not in WEEKEND:
            count += 1
    holidays = frozenset(holidays)
    count -= sum(1 for h in holidays if start <= h < end and h.weekday() not in WEEKEND)
    return count
