"""Simple commands out of the lexer's tokens: where each command starts, how deep inside
compound commands (`if`, `for`, `{ }`, `( )`, `case`) it sits, and on which logical line."""

from __future__ import annotations

from dataclasses import dataclass, field

from coop_dag.agent.messaging.lexer import Op, Redir, Word

_OPEN_WORDS = frozenset({"if", "while", "until", "for", "select", "{", "case"})
_CLOSE_WORDS = frozenset({"fi", "done", "}", "esac"})
_PREFIX_WORDS = frozenset({"then", "do", "else", "elif", "!", "time"})


@dataclass
class Segment:
    items: list[Word | Redir] = field(default_factory=list)
    depth: int = 0
    line: int = 0  # logical-line index
    before: Op | None = None  # control operator joining it to the previous segment
    after: Op | None = None

    @property
    def start(self) -> int:
        return self.items[0].start

    @property
    def end(self) -> int:
        return self.items[-1].end

    def command_word(self) -> Word | None:
        for item in self.items:
            if isinstance(item, Word):
                if not item.is_assignment:
                    return item
            else:
                return None  # a redirection before the command word: not our form
        return None


class _Splitter:
    """The state of `split_segments` while it walks the tokens."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.current = Segment()
        self.depth = 0
        self.case_depth = 0  # inside `case ... esac`, `(` and `)` belong to the patterns
        self.line = 0
        self.line_spans: list[tuple[int, int]] = []
        self.line_start = 0
        self.last_op: Op | None = None
        self.at_command = True  # the next word would be a command word

    def close(self, op: Op | None) -> None:
        """End the current segment (if it has anything) at `op` and open the next one."""
        if self.current.items:
            self.current.after = op
            self.segments.append(self.current)
        self.current = Segment(depth=self.depth, line=self.line, before=op)

    def newline(self, tok: Op) -> None:
        continues = self.last_op is not None and self.last_op.op in ("&&", "||", "|", "|&")
        if continues and not self.current.items:
            return  # a newline after a binary operator continues the line
        self.close(tok)
        self.line_spans.append((self.line_start, tok.end))
        self.line += 1
        self.line_start = tok.resume
        self.current.line = self.line
        self.current.before = tok
        self.last_op, self.at_command = tok, True

    def operator(self, tok: Op) -> None:
        self.close(tok)
        if tok.op == "(" and self.case_depth == 0:
            self.depth += 1
        elif tok.op == ")" and self.case_depth == 0:
            self.depth = max(0, self.depth - 1)
        self.current.depth = self.depth
        self.last_op, self.at_command = tok, True

    def reserved_word(self, tok: Word) -> bool:
        """Handle a word that opens, closes or prefixes a compound command (it ends the
        segment and is not part of one); False for any other word."""
        if tok.value in _OPEN_WORDS:
            self.close(None)
            self.depth += 1
            if tok.value == "case":
                self.case_depth += 1
            self.at_command = tok.value == "{"
        elif tok.value in _CLOSE_WORDS:
            self.close(None)
            self.depth = max(0, self.depth - 1)
            if tok.value == "esac":
                self.case_depth = max(0, self.case_depth - 1)
        elif tok.value in _PREFIX_WORDS:
            self.close(None)
        else:
            return False
        self.current.depth = self.depth
        self.last_op = None
        return True

    def item(self, tok: Word | Redir) -> None:
        if not self.current.items:
            self.current.depth, self.current.line = self.depth, self.line
        self.current.items.append(tok)
        if isinstance(tok, Word) and not tok.is_assignment:
            self.at_command = False
        self.last_op = None


def split_segments(
    tokens: list[Word | Op | Redir], length: int
) -> tuple[list[Segment], list[tuple[int, int]]]:
    """Simple commands with their nesting depth and logical line; plus each logical line's
    span (from after the previous line's heredoc bodies to its terminating newline)."""
    state = _Splitter()
    for tok in tokens:
        if isinstance(tok, Op):
            if tok.op == "\n":
                state.newline(tok)
            else:
                state.operator(tok)
        elif not (
            isinstance(tok, Word)
            and state.at_command
            and not tok.quoted
            and state.reserved_word(tok)
        ):
            state.item(tok)
    state.close(None)
    state.line_spans.append((state.line_start, length))
    return state.segments, state.line_spans
