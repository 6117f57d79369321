import pytest

from webroute import BuildError, Pattern, RouteError, UnknownConverter


def test_static_rule_matches_exactly():
    p = Pattern("/about")
    assert p.match("/about") == {}
    assert p.match("/about/") is None
    assert p.arguments == ()


def test_default_and_int_params():
    p = Pattern("/users/<int:user_id>/posts/<slug>")
    assert p.arguments == ("user_id", "slug")
    assert p.match("/users/12/posts/hello") == {"user_id": 12, "slug": "hello"}
    assert p.match("/users/x/posts/hello") is None
    assert p.match("/users/12/posts/a/b") is None


def test_path_converter_accepts_slashes():
    p = Pattern("/files/<path:name>")
    assert p.match("/files/a/b/c.txt") == {"name": "a/b/c.txt"}
    assert p.build({"name": "docs/read me.txt"}) == "/files/docs/read%20me.txt"


def test_params_are_unquoted():
    assert Pattern("/tags/<tag>").match("/tags/caf%C3%A9") == {"tag": "café"}


def test_build_quotes_and_converts():
    p = Pattern("/users/<int:user_id>/<name>")
    assert p.build({"user_id": 3, "name": "a b/c"}) == "/users/3/a%20b%2Fc"


def test_build_missing_parameter():
    with pytest.raises(BuildError, match="missing parameters: user_id"):
        Pattern("/users/<int:user_id>").build({})


def test_build_bad_int_value():
    with pytest.raises(BuildError):
        Pattern("/users/<int:user_id>").build({"user_id": -1})


@pytest.mark.parametrize("rule", ["users", "/a/<b", "/a/<x>/<x>"])
def test_malformed_rules(rule):
    with pytest.raises(RouteError):
        Pattern(rule)


def test_unknown_converter():
    with pytest.raises(UnknownConverter):
        Pattern("/x/<nope:value>")
