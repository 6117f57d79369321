"""Built-in filters.  A filter is ``func(value, *args) -> value``."""


def _upper(value):
    return str(value).upper()


def _lower(value):
    return str(value).lower()


def _title(value):
    return str(value).title()


def _trim(value):
    return str(value).strip()


def _length(value):
    return len(value)


def _default(value, fallback=""):
    return fallback if value is None or value == "" else value


def _join(value, sep=""):
    return sep.join(str(item) for item in value)


DEFAULT_FILTERS = {
    "upper": _upper,
    "lower": _lower,
    "title": _title,
    "trim": _trim,
    "length": _length,
    "default": _default,
    "join": _join,
}
