from webroute import Dispatcher, NotFound


def make_app():
    app = Dispatcher()

    @app.route("/hello/<name>")
    def hello(name):
        return f"Hello, {name}!"

    @app.route("/items/<int:item_id>", methods=["DELETE"], endpoint="delete_item")
    def remove(item_id):
        return f"deleted {item_id}"

    return app


def test_dispatch_calls_handler_with_params():
    app = make_app()
    assert app.dispatch("/hello/Ada") == "Hello, Ada!"
    assert app.dispatch("/items/3", "DELETE") == "deleted 3"
    assert app.router.url_for("delete_item", item_id=3) == "/items/3"


def test_dispatch_propagates_routing_errors():
    app = make_app()
    try:
        app.dispatch("/missing")
    except NotFound:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected NotFound")


def test_respond_maps_errors_to_status():
    app = make_app()
    assert app.respond("/hello/Bo") == (200, "Hello, Bo!")
    status, body = app.respond("/items/3", "GET")
    assert status == 405 and "DELETE" in body
    assert app.respond("/nope")[0] == 404
