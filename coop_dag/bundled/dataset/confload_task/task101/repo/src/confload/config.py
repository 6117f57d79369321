"""The ``Config`` object: dotted-key access and typed getters."""

from .errors import MissingKeyError, ValidationError
from .merge import merge_all

_MISSING = object()

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


class Config:
    """Read-only view over a nested dict with dotted key lookup."""

    def __init__(self, data=None):
        self._data = dict(data or {})

    def __contains__(self, key):
        return self._lookup(key) is not _MISSING

    def __repr__(self):
        return f"Config({self._data!r})"

    def as_dict(self):
        return dict(self._data)

    def _lookup(self, key):
        node = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def get(self, key, default=None):
        value = self._lookup(key)
        return default if value is _MISSING else value

    def require(self, key):
        value = self._lookup(key)
        if value is _MISSING:
            raise MissingKeyError(key)
        return value

    def section(self, key):
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise ValidationError(key, "is not a section")
        return Config(value)

    def get_str(self, key, default=_MISSING):
        value = self._raw(key, default)
        return value if value is None else str(value)

    def get_int(self, key, default=_MISSING):
        value = self._raw(key, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValidationError(key, f"expected an integer, got {value!r}") from None

    def get_float(self, key, default=_MISSING):
        value = self._raw(key, default)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValidationError(key, f"expected a number, got {value!r}") from None

    def get_bool(self, key, default=_MISSING):
        value = self._raw(key, default)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValidationError(key, f"expected a boolean, got {value!r}")

    def get_list(self, key, default=_MISSING, sep=","):
        value = self._raw(key, default)
        if isinstance(value, (list, tuple)):
            return list(value)
        return [item.strip() for item in str(value).split(sep) if item.strip()]

    def _raw(self, key, default):
        value = self._lookup(key)
        if value is _MISSING:
            if default is _MISSING:
                raise MissingKeyError(key)
            return default
        return value


def load(*sources):
    """Load every source in order and merge them (later sources win)."""
    return Config(merge_all(source.load() for source in sources))
