"""Exception types raised by confload."""


class ConfigError(Exception):
    """Base class for all configuration errors."""


class MissingKeyError(ConfigError, KeyError):
    """Raised when a required key is absent."""

    def __init__(self, key):
        self.key = key
        super().__init__(f"missing configuration key: {key!r}")

    def __str__(self):
        return self.args[0]


class ValidationError(ConfigError, ValueError):
    """Raised when a value cannot be converted or fails validation."""

    def __init__(self, key, message):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")
