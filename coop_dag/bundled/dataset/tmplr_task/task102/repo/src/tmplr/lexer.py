"""Split template source into TEXT, VAR (``{{ }}``) and BLOCK (``{% %}``) tokens."""

import re
from dataclasses import dataclass

from .errors import TemplateSyntaxError

TEXT = "text"
VAR = "var"
BLOCK = "block"

_TAG_RE = re.compile(r"({{.*?}}|{%.*?%})", re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: str
    value: str
    lineno: int


def tokenize(source):
    """Return a list of ``Token`` objects for ``source``."""
    tokens = []
    lineno = 1
    for chunk in _TAG_RE.split(source):
        if not chunk:
            continue
        if chunk.startswith("{{"):
            tokens.append(Token(VAR, chunk[2:-2].strip(), lineno))
        elif chunk.startswith("{%"):
            tokens.append(Token(BLOCK, chunk[2:-2].strip(), lineno))
        else:
            if "{{" in chunk or "{%" in chunk:
                raise TemplateSyntaxError("unclosed tag", lineno)
            tokens.append(Token(TEXT, chunk, lineno))
        lineno += chunk.count("\n")
    return tokens
