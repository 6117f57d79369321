"""Configuration sources.

Every source exposes ``load()`` which returns a nested ``dict`` of plain
values.  Sources never raise for missing data; they just return ``{}``.
"""

import configparser
import os


class Source:
    """Base class for configuration sources."""

    name = "source"

    def load(self):
        raise NotImplementedError


class DictSource(Source):
    """Wrap an in-memory mapping."""

    name = "dict"

    def __init__(self, data):
        self.data = dict(data)

    def load(self):
        return _copy_tree(self.data)


class EnvSource(Source):
    """Read ``PREFIX_KEY=value`` variables from the environment.

    ``APP_DEBUG=1`` with ``prefix="APP"`` becomes ``{"debug": "1"}``.
    """

    name = "env"

    def __init__(self, prefix, environ=None):
        self.prefix = prefix.rstrip("_").upper() + "_"
        self.environ = os.environ if environ is None else environ

    def load(self):
        result = {}
        for name, value in self.environ.items():
            if not name.startswith(self.prefix):
                continue
            key = name[len(self.prefix):].lower()
            if key:
                result[key] = value
        return result


class IniSource(Source):
    """Read an INI file (or INI text) into ``{section: {key: value}}``."""

    name = "ini"

    def __init__(self, path=None, text=None):
        if (path is None) == (text is None):
            raise TypeError("IniSource needs exactly one of path= or text=")
        self.path = path
        self.text = text

    def load(self):
        parser = configparser.ConfigParser(interpolation=None)
        if self.path is not None:
            if not os.path.exists(self.path):
                return {}
            with open(self.path, encoding="utf-8") as fh:
                parser.read_file(fh)
        else:
            parser.read_string(self.text)
        result = {}
        for section in parser.sections():
            result[section] = dict(parser.items(section))
        return result


def _copy_tree(value):
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value
