import pytest

from webroute import BuildError, MethodNotAllowed, NotFound, RouteError, Router
from webroute.converters import Converter


@pytest.fixture
def router():
    r = Router()
    r.add("/", "index")
    r.add("/users", "user_list", methods=["GET", "POST"])
    r.add("/users/<int:user_id>", "user_detail")
    r.add("/users/<int:user_id>", "user_update", methods=["PUT"])
    r.add("/users/<name>", "user_by_name")
    return r


def test_match_first_route_wins(router):
    m = router.match("/users/5")
    assert m.endpoint == "user_detail"
    assert m.params == {"user_id": 5}
    assert router.match("/users/bob").endpoint == "user_by_name"


def test_match_by_method(router):
    assert router.match("/users", "post").endpoint == "user_list"
    assert router.match("/users/5", "PUT").endpoint == "user_update"


def test_not_found(router):
    with pytest.raises(NotFound) as info:
        router.match("/nowhere")
    assert info.value.code == 404


def test_method_not_allowed_lists_methods(router):
    with pytest.raises(MethodNotAllowed) as info:
        router.match("/users", "DELETE")
    assert info.value.code == 405
    assert {"GET", "POST"} <= info.value.allowed


def test_add_requires_a_method():
    with pytest.raises(RouteError):
        Router().add("/x", "x", methods=[])


def test_url_for(router):
    assert router.url_for("index") == "/"
    assert router.url_for("user_detail", user_id=9) == "/users/9"


def test_url_for_picks_route_using_most_values():
    r = Router()
    r.add("/archive", "archive")
    r.add("/archive/<int:year>", "archive")
    assert r.url_for("archive") == "/archive"
    assert r.url_for("archive", year=2024) == "/archive/2024"


def test_url_for_errors(router):
    with pytest.raises(BuildError, match="unknown endpoint"):
        router.url_for("missing")
    with pytest.raises(BuildError, match="missing parameters"):
        router.url_for("user_detail")


def test_custom_converter():
    class UpperConverter(Converter):
        regex = r"[A-Z]+"

        def to_python(self, value):
            return value.lower()

        def to_url(self, value):
            return value.upper()

    r = Router(converters={"upper": UpperConverter})
    r.add("/codes/<upper:code>", "code")
    assert r.match("/codes/ABC").params == {"code": "abc"}
    assert r.url_for("code", code="xyz") == "/codes/XYZ"
    with pytest.raises(NotFound):
        r.match("/codes/abc")
