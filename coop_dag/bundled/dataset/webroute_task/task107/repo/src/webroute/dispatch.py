"""Dispatching requests to handler functions."""

from __future__ import annotations

from .errors import RoutingError
from .router import Router


class Dispatcher:
    """Couple a :class:`Router` with handler callables.

    Handlers are registered with the :meth:`route` decorator and called with
    the matched parameters as keyword arguments.
    """

    def __init__(self, router: Router | None = None) -> None:
        self.router = router if router is not None else Router()
        self.handlers = {}

    def route(self, rule: str, methods=("GET",), endpoint: str | None = None):
        def decorator(func):
            name = endpoint or func.__name__
            self.router.add(rule, name, methods)
            self.handlers[name] = func
            return func

        return decorator

    def dispatch(self, path: str, method: str = "GET"):
        """Call the handler for ``path``; routing errors propagate."""
        match = self.router.match(path, method)
        return self.handlers[match.endpoint](**match.params)

    def respond(self, path: str, method: str = "GET") -> tuple[int, object]:
        """Like :meth:`dispatch` but return ``(status, body)``.

        Routing errors become their HTTP status code with the message as body.
        """
        try:
            return 200, self.dispatch(path, method)
        except RoutingError as exc:
            return exc.code, str(exc)
