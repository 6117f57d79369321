import pytest

from jsonptr import PatchError, apply_patch


def test_add_remove_replace():
    doc = {"a": {"b": [1, 2]}}
    out = apply_patch(doc, [
        {"op": "add", "path": "/a/c", "value": 3},
        {"op": "add", "path": "/a/b/1", "value": 9},
        {"op": "remove", "path": "/a/b/0"},
        {"op": "replace", "path": "/a/c", "value": [4]},
    ])
    assert out == {"a": {"b": [9, 2], "c": [4]}}
    assert doc == {"a": {"b": [1, 2]}}


def test_add_at_array_end_index_and_root():
    assert apply_patch([1], [{"op": "add", "path": "/1", "value": 2}]) == [1, 2]
    assert apply_patch({"a": 1}, [{"op": "replace", "path": "", "value": 5}]) == 5


def test_in_place_and_value_copied():
    doc = {"a": 1}
    value = {"deep": [1]}
    out = apply_patch(doc, [{"op": "add", "path": "/b", "value": value}], in_place=True)
    assert out is doc and doc["b"] == value and doc["b"] is not value


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "frobnicate", "path": "/a"},
        {"op": "add", "path": "/a"},
        {"op": "remove"},
        {"op": "remove", "path": "/missing"},
        {"op": "replace", "path": "/missing", "value": 1},
        {"op": "add", "path": "/a/x/y", "value": 1},
        "not an object",
    ],
)
def test_errors(operation):
    with pytest.raises(PatchError) as info:
        apply_patch({"a": 1}, [{"op": "add", "path": "/z", "value": 0}, operation])
    assert info.value.index == 1


def test_failed_patch_leaves_input_untouched():
    doc = {"a": 1}
    with pytest.raises(PatchError):
        apply_patch(doc, [{"op": "add", "path": "/b", "value": 2}, {"op": "remove", "path": "/c"}])
    assert doc == {"a": 1}
