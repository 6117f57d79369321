import pytest

from jsonptr import InvalidPointer, JsonPointer, PointerResolutionError, escape, unescape

DOC = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, "nested": {"x": {"y": None}}}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", DOC),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/", 0),
        ("/a~1b", 1),
        ("/m~0n", 8),
        ("/nested/x/y", None),
    ],
)
def test_rfc6901_examples(text, expected):
    assert JsonPointer.parse(text).resolve(DOC) == expected


def test_round_trip_and_escaping():
    assert str(JsonPointer.parse("/a~1b/m~0n/0")) == "/a~1b/m~0n/0"
    assert escape("a/b~c") == "a~1b~0c"
    assert unescape("~01") == "~1"


@pytest.mark.parametrize("text", ["foo", "/a~2", "/~"])
def test_invalid(text):
    with pytest.raises(InvalidPointer):
        JsonPointer.parse(text)


@pytest.mark.parametrize("text", ["/missing", "/foo/2", "/foo/01", "/foo/-", "/foo/0/x"])
def test_unresolvable(text):
    pointer = JsonPointer.parse(text)
    with pytest.raises(PointerResolutionError):
        pointer.resolve(DOC)
    assert not pointer.exists(DOC)


def test_parent_and_key():
    parent, key = JsonPointer.parse("/foo/1").parent_and_key(DOC)
    assert parent is DOC["foo"] and key == "1"
    with pytest.raises(PointerResolutionError):
        JsonPointer().parent_and_key(DOC)
