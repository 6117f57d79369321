"""Turn a token stream into a tree of nodes."""

import re
from dataclasses import dataclass, field

from .errors import TemplateSyntaxError
from .lexer import BLOCK, TEXT, VAR


@dataclass
class Text:
    text: str


@dataclass
class Expr:
    """A variable path or literal followed by zero or more filters."""

    path: str = None
    literal: object = None
    filters: list = field(default_factory=list)  # [(name, [args])]


@dataclass
class Output:
    expr: Expr


@dataclass
class If:
    expr: Expr
    negate: bool
    body: list
    else_body: list = field(default_factory=list)


@dataclass
class For:
    target: str
    iterable: Expr
    body: list


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILTER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?$", re.DOTALL)
_ARG = re.compile(r"""\s*('[^']*'|"[^"]*"|[^,'"\s][^,]*?)\s*(?:,|$)""")


def parse_literal(text, lineno=None):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise TemplateSyntaxError(f"invalid literal: {text!r}", lineno) from None


def parse_args(raw, lineno=None):
    """Parse a comma-separated list of literals; commas inside quotes are kept."""
    args, pos, raw = [], 0, raw.strip()
    while pos < len(raw):
        match = _ARG.match(raw, pos)
        if not match or match.end() == pos:
            raise TemplateSyntaxError(f"invalid arguments: {raw!r}", lineno)
        args.append(parse_literal(match.group(1), lineno))
        pos = match.end()
    return args


def parse_expr(text, lineno=None):
    """Parse ``name.path | filter | filter(arg, ...)``."""
    head, *filters = [part.strip() for part in text.split("|")]
    if not head:
        raise TemplateSyntaxError("empty expression", lineno)
    expr = Expr()
    if _NAME.match(head):
        expr.path = head
    else:
        expr.literal = parse_literal(head, lineno)
    for item in filters:
        match = _FILTER.match(item)
        if not match:
            raise TemplateSyntaxError(f"invalid filter: {item!r}", lineno)
        args = parse_args(match.group(2) or "", lineno)
        expr.filters.append((match.group(1), args))
    return expr


class Parser:
    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.pos = 0

    def parse(self):
        nodes, tag, token = self.parse_until(())
        return nodes

    def parse_until(self, stops):
        """Parse nodes until a block tag in ``stops``; return (nodes, tag, token)."""
        nodes = []
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            self.pos += 1
            if token.kind == TEXT:
                nodes.append(Text(token.value))
            elif token.kind == VAR:
                nodes.append(Output(parse_expr(token.value, token.lineno)))
            elif token.kind == BLOCK:
                tag, _, rest = token.value.partition(" ")
                if tag in stops:
                    return nodes, tag, token
                if tag == "if":
                    nodes.append(self.parse_if(rest.strip(), token))
                elif tag == "for":
                    nodes.append(self.parse_for(rest.strip(), token))
                else:
                    raise TemplateSyntaxError(f"unexpected tag: {tag!r}", token.lineno)
        if stops:
            raise TemplateSyntaxError(f"missing {{% {stops[-1]} %}}")
        return nodes, None, None

    def parse_if(self, rest, token):
        negate = rest.startswith("not ")
        if negate:
            rest = rest[4:].strip()
        node = If(parse_expr(rest, token.lineno), negate, [])
        node.body, tag, _ = self.parse_until(("else", "endif"))
        if tag == "else":
            node.else_body, _, _ = self.parse_until(("endif",))
        return node

    def parse_for(self, rest, token):
        target, sep, iterable = rest.partition(" in ")
        target = target.strip()
        if not sep or not _IDENT.match(target):
            raise TemplateSyntaxError("expected 'for <name> in <expr>'", token.lineno)
        node = For(target, parse_expr(iterable, token.lineno), [])
        node.body, _, _ = self.parse_until(("endfor",))
        return node


def parse(tokens):
    """Parse ``tokens`` into a list of nodes."""
    return Parser(tokens).parse()
