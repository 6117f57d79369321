"""datehelp: parsing, business-day arithmetic, humanized deltas and ranges."""

from .business import (
    WEEKEND,
    add_business_days,
    business_days_between,
    is_business_day,
    next_business_day,
)
from .errors import DateHelpError, DateParseError
from .humanize import humanize_delta, natural_day
from .parsing import format_date, parse_date
from .ranges import DateRange, date_range

__all__ = [
    "DateHelpError",
    "DateParseError",
    "DateRange",
    "WEEKEND",
    "add_business_days",
    "business_days_between",
    "date_range",
    "format_date",
    "humanize_delta",
    "is_business_day",
    "natural_day",
    "next_business_day",
    "parse_date",
]
