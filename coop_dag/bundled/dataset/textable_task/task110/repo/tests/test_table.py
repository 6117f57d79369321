import pytest

from textable import Table


def make():
    t = Table(["name", "qty"], align={"qty": "right"})
    t.add_rows([["apple", 3], ["kiwi", 12]])
    return t


def test_plain():
    assert make().render() == "name   qty\n-----  ---\napple    3\nkiwi    12"


def test_grid():
    assert make().render("grid") == (
        "+-------+-----+\n"
        "| name  | qty |\n"
        "+-------+-----+\n"
        "| apple |   3 |\n"
        "| kiwi  |  12 |\n"
        "+-------+-----+"
    )


def test_pipe():
    assert make().render("pipe").splitlines()[:2] == ["| name  | qty |", "|-------|-----|"]


def test_values_are_formatted():
    t = Table(["x", "ok"])
    t.add_row([0.5, None])
    assert t.rows == [["0.50", ""]]


def test_wide_characters_align():
    t = Table(["k"])
    t.add_rows([["日本"], ["ab"]])
    assert t.render().splitlines() == ["k", "----", "日本", "ab"]


def test_errors():
    with pytest.raises(ValueError):
        Table([])
    with pytest.raises(KeyError):
        Table(["a"], align={"b": "left"})
    with pytest.raises(ValueError):
        Table(["a"], align={"a": "up"})
    with pytest.raises(ValueError):
        make().add_row([1])
