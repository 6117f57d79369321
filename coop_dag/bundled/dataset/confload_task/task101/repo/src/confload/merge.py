"""Deep merging of nested configuration dictionaries."""


def deep_merge(base, override):
    """Return a new dict with ``override`` merged on top of ``base``.

    Nested dictionaries are merged recursively; any other value in
    ``override`` replaces the one in ``base``.  Neither input is mutated.
    """
    result = dict(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            result[key] = deep_merge(current, value)
        else:
            result[key] = value
    return result


def merge_all(layers):
    """Merge a sequence of dicts, later layers winning."""
    result = {}
    for layer in layers:
        result = deep_merge(result, layer)
    return result
