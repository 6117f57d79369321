"""Exception hierarchy used by the router."""

from __future__ import annotations


class RoutingError(Exception):
    """Base class for every error raised by webroute."""

    code = 500


class RouteError(RoutingError, ValueError):
    """A route rule is malformed (raised when the route is defined)."""


class UnknownConverter(RouteError):
    """A rule refers to a converter name that is not registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown converter {name!r}")
        self.name = name


class NotFound(RoutingError):
    """No route matches the requested path."""

    code = 404

    def __init__(self, path: str) -> None:
        super().__init__(f"no route matches {path!r}")
        self.path = path


class MethodNotAllowed(RoutingError):
    """A route matches the path, but not for the requested method."""

    code = 405

    def __init__(self, path: str, method: str, allowed) -> None:
        self.path = path
        self.method = method
        self.allowed = frozenset(allowed)
        listing = ", ".join(sorted(self.allowed))
        super().__init__(f"method {method} not allowed for {path!r} (allowed: {listing})")


class BuildError(RoutingError):
    """A URL could not be built for an endpoint."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot build URL for {endpoint!r}: {reason}")
        self.endpoint = endpoint
        self.reason = reason
