"""confload: a tiny layered configuration loader."""

from .config import Config, load
from .errors import ConfigError, MissingKeyError, ValidationError
from .merge import deep_merge
from .sources import DictSource, EnvSource, IniSource
from .validate import validate

__all__ = [
    "Config",
    "ConfigError",
    "DictSource",
    "EnvSource",
    "IniSource",
    "MissingKeyError",
    "ValidationError",
    "deep_merge",
    "load",
    "validate",
]
