"""Block-level parsing: turn Markdown source into a list of block nodes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([\w+-]*)[ \t]*$")
_HR_RE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET_RE = re.compile(r"^ {0,3}[-*+][ \t]+(.*)$")
_ORDERED_RE = re.compile(r"^ {0,3}(\d{1,9})[.)][ \t]+(.*)$")


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class CodeBlock:
    code: str
    lang: str = ""


@dataclass
class ListBlock:
    ordered: bool
    items: list[str] = field(default_factory=list)
    start: int = 1


@dataclass
class ThematicBreak:
    pass


def _list_item(line: str):
    """Return ``(ordered, number, text)`` for a list item line, else ``None``."""
    m = _BULLET_RE.match(line)
    if m:
        return False, 1, m.group(1)
    m = _ORDERED_RE.match(line)
    if m:
        return True, int(m.group(1)), m.group(2)
    return None


def parse_blocks(text: str) -> list:
    """Parse ``text`` into Heading/Paragraph/CodeBlock/ListBlock/ThematicBreak nodes."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    blocks: list = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(Paragraph("\n".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
            continue
        fence = _FENCE_RE.match(line)
        if fence:
            flush()
            marker, body = fence.group(1), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            blocks.append(CodeBlock("\n".join(body), fence.group(2)))
            i += 1  # skip the closing fence (or run past the end)
            continue
        heading = _HEADING_RE.match(line)
        if heading:
            flush()
            blocks.append(Heading(len(heading.group(1)), (heading.group(2) or "").strip()))
            i += 1
            continue
        if _HR_RE.match(line):
            flush()
            blocks.append(ThematicBreak())
            i += 1
            continue
        item = _list_item(line)
        if item:
            flush()
            ordered, start, first = item
            block = ListBlock(ordered, [first], start)
            i += 1
            while i < len(lines):
                nxt = _list_item(lines[i])
                if nxt and nxt[0] == ordered:
                    block.items.append(nxt[2])
                elif lines[i].startswith("  ") and lines[i].strip() and not nxt:
                    block.items[-1] += "\n" + lines[i].strip()
                else:
                    break
                i += 1
            blocks.append(block)
            continue
        para.append(line.strip())
        i += 1
    flush()
    return blocks
