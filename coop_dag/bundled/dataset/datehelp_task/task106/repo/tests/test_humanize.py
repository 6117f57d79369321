from datetime import date, timedelta

import pytest

from datehelp import humanize_delta, natural_day


@pytest.mark.parametrize(
    "delta,expected",
    [
        (timedelta(0), "just now"),
        (timedelta(milliseconds=-400), "just now"),
        (timedelta(seconds=1), "in 1 second"),
        (timedelta(seconds=-45), "45 seconds ago"),
        (timedelta(minutes=1, seconds=59), "in 1 minute"),
        (timedelta(hours=-2, minutes=-30), "2 hours ago"),
        (timedelta(days=3), "in 3 days"),
        (timedelta(days=-13), "1 week ago"),
        (timedelta(days=45), "in 1 month"),
        (timedelta(days=-800), "2 years ago"),
    ],
)
def test_humanize_delta(delta, expected):
    assert humanize_delta(delta) == expected


def test_natural_day():
    today = date(2024, 3, 5)
    assert natural_day(today, today) == "today"
    assert natural_day(date(2024, 3, 4), today) == "yesterday"
    assert natural_day(date(2024, 3, 6), today) == "tomorrow"
    assert natural_day(date(2024, 7, 14), today) == "Jul 14"
    assert natural_day(date(2023, 12, 31), today) == "December 31, 2023"
