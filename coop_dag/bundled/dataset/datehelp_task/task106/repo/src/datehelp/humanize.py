"""Human-friendly descriptions of time differences."""

from __future__ import annotations

from datetime import date, timedelta

from .parsing import format_date

# (singular name, length in seconds), largest first. Months and years are the
# usual approximations of 30 and 365 days.
UNITS = (
    ("year", 365 * 86400),
    ("month", 30 * 86400),
    ("week", 7 * 86400),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
    ("second", 1),
)


def _plural(amount: int, name: str) -> str:
    return f"{amount} {name}" if amount == 1 else f"{amount} {name}s"


def humanize_delta(delta: timedelta) -> str:
    """Describe ``delta`` using its largest whole unit.

    Positive deltas lie in the future (``"in 3 days"``), negative ones in the
    past (``"2 hours ago"``). Anything under a second is ``"just now"``.
    """
    seconds = int(abs(delta.total_seconds()))
    if seconds < 1:
        return "just now"
    for name, size in UNITS:
        if seconds >= size:
            phrase = _plural(seconds // size, name)
            break
    return f"in {phrase}" if delta > timedelta(0) else f"{phrase} ago"


def natural_day(day: date, today: date | None = None) -> str:
    """``"today"``, ``"yesterday"``, ``"tomorrow"`` or a short date.

    Dates in another year than ``today`` include the year.
    """
    today = today or date.today()
    offset = (day - today).days
    if offset == 0:
        return "today"
    if offset == -1:
        return "yesterday"
    if offset == 1:
        return "tomorrow"
    if day.year == today.year:
        return format_date(day, "short")
    return format_date(day, "long")
