"""textable: plain-text tables."""

from .cells import display_width, format_cell, pad
from .styles import STYLES, Style, get_style
from .table import Table

__all__ = ["STYLES", "Style", "Table", "display_width", "format_cell", "get_style", "pad"]
