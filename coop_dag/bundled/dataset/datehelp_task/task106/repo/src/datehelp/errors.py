"""Exceptions raised by datehelp."""


class DateHelpError(Exception):
    """Base class for datehelp errors."""


class DateParseError(DateHelpError, ValueError):
    """A string could not be parsed as a date."""
