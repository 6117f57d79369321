"""argkit: a small command-line argument parser."""

from .errors import (
    ArgkitError,
    BadParameterError,
    MissingParameterError,
    NoSuchOptionError,
    SpecError,
    UsageError,
)
from .formatter import format_help, format_usage
from .parser import Parser
from .spec import Argument, Option

__all__ = [
    "ArgkitError",
    "Argument",
    "BadParameterError",
    "MissingParameterError",
    "NoSuchOptionError",
    "Option",
    "Parser",
    "SpecError",
    "UsageError",
    "format_help",
    "format_usage",
]

__version__ = "0.3.0"
