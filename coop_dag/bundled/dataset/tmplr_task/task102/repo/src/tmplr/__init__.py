"""tmplr: a small, dependency-free template renderer."""

from .errors import TemplateError, TemplateSyntaxError, UndefinedError
from .filters import DEFAULT_FILTERS
from .lexer import tokenize
from .parser import parse
from .renderer import Renderer


class Template:
    """A compiled template.  ``Template(src).render(name="x")``."""

    def __init__(self, source, filters=None, strict=False):
        self.source = source
        self.nodes = parse(tokenize(source))
        self.filters = dict(DEFAULT_FILTERS)
        if filters:
            self.filters.update(filters)
        self.strict = strict

    def render(self, context=None, **kwargs):
        data = dict(context or {})
        data.update(kwargs)
        return Renderer(self.filters, strict=self.strict).render(self.nodes, data)


def render(source, context=None, **kwargs):
    """Compile and render ``source`` in one step."""
    return Template(source).render(context, **kwargs)


__all__ = [
    "Template",
    "TemplateError",
    "TemplateSyntaxError",
    "UndefinedError",
    "render",
    "tokenize",
    "parse",
]
