from datetime import date

import pytest

from datehelp import DateParseError, format_date, parse_date


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2024-03-05", date(2024, 3, 5)),
        ("2024-3-5", date(2024, 3, 5)),
        (" 2024-12-31 ", date(2024, 12, 31)),
        ("05/03/2024", date(2024, 3, 5)),
        ("Mar 5, 2024", date(2024, 3, 5)),
        ("March 5 2024", date(2024, 3, 5)),
        ("sept. 30, 2023", date(2023, 9, 30)),
    ],
)
def test_parse_supported_formats(text, expected):
    assert parse_date(text) == expected


def test_month_first():
    assert parse_date("03/04/2024") == date(2024, 4, 3)
    assert parse_date("03/04/2024", dayfirst=False) == date(2024, 3, 4)


@pytest.mark.parametrize("text", ["", "yesterday", "2024/03/05", "2024.03.05", "Ma 5, 2024", "Smarch 5, 2024"])
def test_unrecognised(text):
    with pytest.raises(DateParseError):
        parse_date(text)


def test_invalid_calendar_date():
    with pytest.raises(DateParseError, match="invalid date '2023-02-29'"):
        parse_date("2023-02-29")
    assert isinstance(DateParseError("x"), ValueError)


def test_format_date():
    day = date(2024, 3, 5)
    assert format_date(day) == "2024-03-05"
    assert format_date(day, "long") == "March 5, 2024"
    assert format_date(day, "short") == "Mar 5"
    with pytest.raises(ValueError):
        format_date(day, "fancy")


def test_round_trip_long_format():
    day = date(2023, 11, 17)
    assert parse_date(format_date(day, "long")) == day
