from datetime import date

import pytest

from datehelp import DateHelpError, DateRange, date_range


def test_date_range_half_open():
    days = list(date_range(date(2024, 2, 27), date(2024, 3, 2)))
    assert days == [date(2024, 2, 27), date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)]


def test_date_range_steps():
    assert list(date_range(date(2024, 1, 1), date(2024, 1, 22), step=7)) == [
        date(2024, 1, 1),
        date(2024, 1, 8),
        date(2024, 1, 15),
    ]
    assert list(date_range(date(2024, 1, 3), date(2024, 1, 1), step=-1)) == [
        date(2024, 1, 3),
        date(2024, 1, 2),
    ]
    assert list(date_range(date(2024, 1, 3), date(2024, 1, 1))) == []
    with pytest.raises(ValueError):
        list(date_range(date(2024, 1, 1), date(2024, 1, 2), step=0))


def test_daterange_basics():
    march = DateRange(date(2024, 3, 1), date(2024, 3, 31))
    assert len(march) == 31
    assert date(2024, 3, 31) in march
    assert date(2024, 4, 1) not in march
    assert "2024-03-05" not in march
    assert list(march)[-1] == date(2024, 3, 31)
    assert str(march) == "2024-03-01..2024-03-31"
    with pytest.raises(DateHelpError):
        DateRange(date(2024, 3, 2), date(2024, 3, 1))


def test_from_string():
    assert DateRange.from_string("2024-03-01..Mar 10, 2024") == DateRange(date(2024, 3, 1), date(2024, 3, 10))
    assert DateRange.from_string("01/02/2024..03/02/2024", dayfirst=False).end == date(2024, 3, 2)
    with pytest.raises(DateHelpError):
        DateRange.from_string("2024-03-01 - 2024-03-10")


def test_overlap_and_intersection():
    a = DateRange(date(2024, 3, 1), date(2024, 3, 10))
    b = DateRange(date(2024, 3, 10), date(2024, 3, 20))
    c = DateRange(date(2024, 3, 11), date(2024, 3, 12))
    assert a.overlaps(b) and b.overlaps(a)
    assert not a.overlaps(c)
    assert a.intersection(b) == DateRange(date(2024, 3, 10), date(2024, 3, 10))
    assert a.intersection(c) is None


def test_business_days():
    week = DateRange(date(2024, 3, 8), date(2024, 3, 12))
    assert week.business_days() == [date(2024, 3, 8), date(2024, 3, 11), date(2024, 3, 12)]
    assert week.business_days(holidays=[date(2024, 3, 11)]) == [date(2024, 3, 8), date(2024, 3, 12)]
