from datetime import date

import pytest

from datehelp import add_business_days, business_days_between, is_business_day, next_business_day

FRI = date(2024, 3, 8)
SAT = date(2024, 3, 9)
SUN = date(2024, 3, 10)
MON = date(2024, 3, 11)


def test_is_business_day():
    assert is_business_day(FRI)
    assert not is_business_day(SAT)
    assert not is_business_day(SUN)
    assert not is_business_day(MON, holidays=[MON])


def test_next_business_day():
    assert next_business_day(FRI) == MON
    assert next_business_day(SAT) == MON
    assert next_business_day(FRI, holidays={MON}) == date(2024, 3, 12)


@pytest.mark.parametrize(
    "start,days,expected",
    [
        (FRI, 1, MON),
        (SAT, 1, MON),
        (MON, 5, date(2024, 3, 18)),
        (MON, -1, FRI),
        (SUN, -1, FRI),
        (MON, 0, MON),
        (SAT, 0, SAT),
        (date(2024, 12, 23), 3, date(2024, 12, 26)),
    ],
)
def test_add_business_days(start, days, expected):
    assert add_business_days(start, days) == expected


def test_add_business_days_with_holidays():
    christmas = [date(2024, 12, 25), date(2024, 12, 26)]
    assert add_business_days(date(2024, 12, 23), 3, christmas) == date(2024, 12, 30)
    assert add_business_days(date(2024, 12, 30), -3, christmas) == date(2024, 12, 23)


@pytest.mark.parametrize(
    "start,end,expected",
    [
        (MON, MON, 0),
        (FRI, MON, 1),
        (MON, date(2024, 3, 18), 5),
        (date(2024, 1, 1), date(2025, 1, 1), 262),
        (date(2024, 3, 6), date(2024, 3, 26), 14),
        (MON, FRI, -1),
        (date(2024, 3, 18), MON, -5),
    ],
)
def test_business_days_between(start, end, expected):
    assert business_days_between(start, end) == expected


def test_business_days_between_matches_brute_force():
    start = date(2024, 2, 20)
    holidays = [date(2024, 3, 29), date(2024, 4, 1), date(2024, 3, 30)]
    for length in range(0, 60):
        end = date.fromordinal(start.toordinal() + length)
        brute = sum(
            is_business_day(date.fromordinal(o), holidays)
            for o in range(start.toordinal(), end.toordinal())
        )
        assert business_days_between(start, end, holidays) == brute
