"""Render a node tree against a context."""

from .errors import TemplateError, UndefinedError
from .parser import For, If, Output, Text

_UNDEFINED = object()


class Context:
    """A stack of scopes; inner scopes shadow outer ones."""

    def __init__(self, data):
        self.scopes = [data]

    def push(self, scope):
        self.scopes.append(scope)

    def pop(self):
        self.scopes.pop()

    def resolve(self, path):
        first, *rest = path.split(".")
        for scope in reversed(self.scopes):
            if first in scope:
                value = scope[first]
                break
        else:
            return _UNDEFINED
        for part in rest:
            value = _get_item(value, part)
            if value is _UNDEFINED:
                return _UNDEFINED
        return value


def _get_item(value, part):
    if isinstance(value, dict):
        return value.get(part, _UNDEFINED)
    if isinstance(value, (list, tuple)) and part.isdigit():
        index = int(part)
        return value[index] if index < len(value) else _UNDEFINED
    return getattr(value, part, _UNDEFINED)


class Renderer:
    def __init__(self, filters, strict=False):
        self.filters = filters
        self.strict = strict

    def render(self, nodes, data):
        out = []
        self._render_nodes(nodes, Context(data), out)
        return "".join(out)

    def _render_nodes(self, nodes, ctx, out):
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Output):
                value = self._eval(node.expr, ctx)
                out.append("" if value is None else str(value))
            elif isinstance(node, If):
                truthy = bool(self._eval(node.expr, ctx))
                if truthy != node.negate:
                    self._render_nodes(node.body, ctx, out)
                else:
                    self._render_nodes(node.else_body, ctx, out)
            elif isinstance(node, For):
                self._render_for(node, ctx, out)

    def _render_for(self, node, ctx, out):
        items = self._eval(node.iterable, ctx)
        if items is None:
            items = []
        for item in items:
            ctx.push({node.target: item})
            try:
                self._render_nodes(node.body, ctx, out)
            finally:
                ctx.pop()

    def _eval(self, expr, ctx):
        if expr.path is not None:
            value = ctx.resolve(expr.path)
            if value is _UNDEFINED:
                if self.strict:
                    raise UndefinedError(f"undefined variable: {expr.path!r}")
                value = None
        else:
            value = expr.literal
        for name, args in expr.filters:
            func = self.filters.get(name)
            if func is None:
                raise TemplateError(f"unknown filter: {name!r}")
            value = func(value, *args)
        return value
