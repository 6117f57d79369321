"""Exceptions raised while compiling or rendering templates."""


class TemplateError(Exception):
    """Base class for all tmplr errors."""


class TemplateSyntaxError(TemplateError):
    """The template source is malformed."""

    def __init__(self, message, lineno=None):
        self.message = message
        self.lineno = lineno
        where = f" (line {lineno})" if lineno is not None else ""
        super().__init__(f"{message}{where}")


class UndefinedError(TemplateError):
    """A variable could not be resolved while rendering in strict mode."""
