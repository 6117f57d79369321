"""The router: an ordered collection of routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .converters import DEFAULT_CONVERTERS
from .errors import BuildError, MethodNotAllowed, NotFound, RouteError
from .pattern import Pattern


@dataclass(frozen=True)
class Route:
    pattern: Pattern
    endpoint: str
    methods: frozenset


@dataclass(frozen=True)
class Match:
    endpoint: str
    params: dict = field(default_factory=dict)
    route: Route | None = None


class Router:
    """Match request paths to endpoints and build URLs back from them.

    Routes are tried in the order they were added; the first route whose
    pattern and method both match wins.
    """

    def __init__(self, converters=None) -> None:
        self.converters = dict(DEFAULT_CONVERTERS)
        if converters:
            self.converters.update(converters)
        self._routes: list[Route] = []
        self._by_endpoint: dict[str, list[Route]] = {}

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    def add(self, rule: str, endpoint: str, methods=("GET",)) -> Route:
        """Register ``rule`` for ``endpoint`` and return the new route."""
        if isinstance(methods, str):
            methods = (methods,)
        methods = frozenset(m.upper() for m in methods)
        if not methods:
            raise RouteError(f"route {rule!r} needs at least one method")
        route = Route(Pattern(rule, self.converters), endpoint, methods)
        self._routes.append(route)
        self._by_endpoint.setdefault(endpoint, []).append(route)
        return route

    def match(self, path: str, method: str = "GET") -> Match:
        """Find the route for ``path``; raise NotFound or MethodNotAllowed."""
        method = method.upper()
        allowed: set[str] = set()
        for route in self._routes:
            params = route.pattern.match(path)
            if params is None:
                continue
            if method not in route.methods:
                allowed.update(route.methods)
                continue
            return Match(route.endpoint, params, route)
        if allowed:
            raise MethodNotAllowed(path, method, allowed)
        raise NotFound(path)

    def url_for(self, endpoint: str, **values) -> str:
        """Build the path for ``endpoint``.

        When an endpoint has several routes, the one using the most of the
        given values (and missing none of its own parameters) is used.
        """
        routes = self._by_endpoint.get(endpoint)
        if not routes:
            raise BuildError(endpoint, "unknown endpoint")
        candidates = [
            r for r in routes if all(arg in values for arg in r.pattern.arguments)
        ]
        if not candidates:
            needed = " or ".join(repr(r.pattern.rule) for r in routes)
            raise BuildError(endpoint, f"missing parameters for {needed}")
        best = max(candidates, key=lambda r: len(r.pattern.arguments))
        return best.pattern.build(values)
