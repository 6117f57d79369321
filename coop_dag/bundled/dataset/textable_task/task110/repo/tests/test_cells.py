import pytest

from textable import display_width, format_cell, pad


def test_display_width_counts_wide_and_combining():
    assert display_width("abc") == 3
    assert display_width("日本") == 4
    assert display_width("e\u0301") == 1


@pytest.mark.parametrize(
    "value, text",
    [(None, ""), (True, "yes"), (False, "no"), (3, "3"), (2.5, "2.50"), ("x", "x")],
)
def test_format_cell(value, text):
    assert format_cell(value) == text


def test_format_cell_float_format():
    assert format_cell(1 / 3, ".3f") == "0.333"


def test_pad():
    assert pad("ab", 5) == "ab   "
    assert pad("ab", 5, "right") == "   ab"
    assert pad("ab", 5, "center") == " ab  "
    assert pad("日", 4, "right") == "  日"
    assert pad("toolong", 3) == "toolong"
    with pytest.raises(ValueError):
        pad("a", 3, "middle")
