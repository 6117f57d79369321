"""webroute: a tiny URL router with typed parameters."""

from .converters import DEFAULT_CONVERTERS, Converter
from .dispatch import Dispatcher
from .errors import (
    BuildError,
    MethodNotAllowed,
    NotFound,
    RouteError,
    RoutingError,
    UnknownConverter,
)
from .pattern import Pattern
from .router import Match, Route, Router

__all__ = [
    "BuildError",
    "Converter",
    "DEFAULT_CONVERTERS",
    "Dispatcher",
    "Match",
    "MethodNotAllowed",
    "NotFound",
    "Pattern",
    "Route",
    "RouteError",
    "Router",
    "RoutingError",
    "UnknownConverter",
]
