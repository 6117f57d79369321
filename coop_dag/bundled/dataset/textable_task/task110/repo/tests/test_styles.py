import pytest

from textable import STYLES, Style, Table, get_style


def test_builtin_styles():
    assert {"plain", "grid", "pipe"} <= set(STYLES)
    assert get_style("grid").frame


def test_unknown_style():
    with pytest.raises(ValueError, match="available"):
        get_style("fancy")


def test_custom_style_object():
    t = Table(["a"])
    t.add_row([1])
    assert t.render(Style("dots", " ", ".", " ")) == "a\n.\n1"
