"""Declarative validation of a ``Config`` against a simple schema.

A schema maps dotted keys to a type (``int``, ``float``, ``bool``, ``str``,
``list``).  ``validate`` returns a flat dict of converted values and raises
``ValidationError`` for the first invalid or missing key.
"""

from .errors import MissingKeyError, ValidationError

_GETTERS = {
    int: "get_int",
    float: "get_float",
    bool: "get_bool",
    str: "get_str",
    list: "get_list",
}


def validate(config, schema):
    result = {}
    for key, kind in schema.items():
        getter = _GETTERS.get(kind)
        if getter is None:
            raise TypeError(f"unsupported schema type for {key!r}: {kind!r}")
        try:
            result[key] = getattr(config, getter)(key)
        except MissingKeyError:
            raise ValidationError(key, "is required") from None
    return result
