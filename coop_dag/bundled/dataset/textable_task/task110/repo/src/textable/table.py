"""The Table: headers, rows, and rendering in a style."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .cells import ALIGNMENTS, display_width, format_cell, pad
from .styles import Style, get_style


class Table:
    """A table of formatted cells; `align` maps header names to left/right/center."""

    def __init__(
        self, headers: Sequence[object], align: dict[str, str] | None = None,
        float_format: str = ".2f",
    ) -> None:
        self.headers = [str(h) for h in headers]
        if not self.headers:
            raise ValueError("a table needs at least one column")
        self.float_format = float_format
        self.align = dict(align or {})
        unknown = sorted(set(self.align) - set(self.headers))
        if unknown:
            raise KeyError(f"alignment given for unknown columns: {unknown}")
        bad = sorted(a for a in self.align.values() if a not in ALIGNMENTS)
        if bad:
            raise ValueError(f"unknown alignments: {bad}")

        self.rows: list[list[str]] = []

    def add_row(self, values: Sequence[object]) -> None:
        if len(values) != len(self.headers):
            raise ValueError(f"expected {len(self.headers)} values, got {len(values)}")
        self.rows.append([format_cell(v, self.float_format) for v in values])

    def add_rows(self, rows: Iterable[Sequence[object]]) -> None:
        for row in rows:
            self.add_row(row)

    def column_widths(self) -> list[int]:
        """Display width of each column: its widest cell, header included."""
        widths = [display_width(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], display_width(cell))
        return widths

    def alignments(self) -> list[str]:
        return [self.align.get(h, "left") for h in self.headers]

    def _line(self, cells: list[str], style: Style) -> str:
        space = " " * style.padding
        inner = style.vertical.join(f"{space}{cell}{space}" for cell in cells)
        if style.borders:
            return f"{style.vertical}{inner}{style.vertical}"
        return inner.rstrip()

    def _rule(self, widths: list[int], style: Style) -> str:
        segments = [style.horizontal * (w + 2 * style.padding) for w in widths]
        inner = style.junction.join(segments)
        return f"{style.junction}{inner}{style.junction}" if style.borders else inner

    def render(self, style: str | Style = "plain") -> str:
        style = get_style(style) if isinstance(style, str) else style
        widths = self.column_widths()
        aligns = self.alignments()

        def line(cells: list[str]) -> str:
            padded = [pad(c, w, a) for c, w, a in zip(cells, widths, aligns)]
            return self._line(padded, style)

        out = []
        if style.frame:
            out.append(self._rule(widths, style))
        out.append(line(self.headers))
        out.append(self._rule(widths, style))
        for row in self.rows:
            out.append(line(row))
        if style.frame:
            out.append(self._rule(widths, style))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()
