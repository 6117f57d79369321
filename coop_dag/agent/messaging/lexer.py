"""A small bash lexer: words (with bash quoting rules), control operators, redirections and
here-document bodies.

It only has to find where simple commands start (`segments.py`), so that a `send_message`
counts only in command position and never inside a string, a comment or another command's
heredoc body. Nothing is expanded: `$VAR`, `$(...)` and backticks in a message are delivered
literally (the message never reaches a shell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_METACHARS = frozenset(" \t\n;&|()<>")
_CONTROL_OPS = ("&&", "||", ";;&", ";;", ";&", "|&", ";", "&", "|", "(", ")")
_REDIR_OPS = ("<<<", "<<-", "<<", "&>>", "&>", "<>", "<&", ">&", ">>", ">|", "<", ">")
_FD_PREFIX = re.compile(r"\d+(?=[<>])")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_ANSI_C = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


@dataclass
class Word:
    start: int
    end: int
    value: str
    quoted: bool  # any quoting (', ", \, $'...') — decides heredoc-delimiter quoting
    unterminated: bool = False
    raw: str = ""

    @property
    def is_assignment(self) -> bool:
        return bool(_ASSIGNMENT.match(self.raw))


@dataclass
class HereDoc:
    op: str  # "<<" or "<<-"
    delimiter: str
    quoted: bool
    body_start: int = -1
    body_end: int = -1  # end of the closing delimiter line, including its newline
    content: str = ""
    terminated: bool = False


@dataclass
class Redir:
    start: int
    end: int
    op: str
    target: Word | None
    heredoc: HereDoc | None = None


@dataclass
class Op:
    start: int
    end: int
    op: str
    resume: int = -1  # for "\n": where the next line starts, after any heredoc bodies


def _skip_balanced(s: str, i: int, open_ch: str, close_ch: str) -> int | None:
    """`s[i] == open_ch`; index after the matching `close_ch`, honouring quotes and escapes.
    None when unbalanced."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            i = j + 1
            continue
        if c == '"':
            j = _scan_double(s, i + 1)[0]
            if j is None:
                return None
            i = j
            continue
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _scan_double(s: str, i: int) -> tuple[int | None, str]:
    """Scan a double-quoted string whose body starts at `i`. Returns (index after the closing
    quote or None if unterminated, decoded value). Bash rules: backslash escapes only
    `$ \\` " \\ newline`; `$(...)` nests; everything else (incl. `\\n`) is literal."""
    out: list[str] = []
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            nxt = s[i + 1]
            if nxt in '$`"\\':
                out.append(nxt)
            elif nxt != "\n":  # backslash-newline is a line continuation: dropped
                out.append(c + nxt)
            i += 2
        elif c == '"':
            return i + 1, "".join(out)
        elif c == "$" and i + 1 < n and s[i + 1] in "({":
            j = _skip_balanced(s, i + 1, s[i + 1], ")" if s[i + 1] == "(" else "}")
            if j is None:
                out.append(c)
                i += 1
            else:
                out.append(s[i:j])
                i = j
        else:
            out.append(c)
            i += 1
    return None, "".join(out)


def _decode_ansi_c(body: str) -> str:
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ANSI_C:
            out.append(_ANSI_C[nxt])
            i += 2
        elif nxt == "x":
            m = re.match(r"[0-9A-Fa-f]{1,2}", body[i + 2 :])
            if m:
                out.append(chr(int(m.group(), 16)))
                i += 2 + m.end()
            else:
                out.append("\\x")
                i += 2
        elif nxt in "uU":
            digits = 4 if nxt == "u" else 8
            m = re.match(rf"[0-9A-Fa-f]{{1,{digits}}}", body[i + 2 :])
            if m:
                out.append(chr(int(m.group(), 16)))
                i += 2 + m.end()
            else:
                out.append("\\" + nxt)
                i += 2
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1 :])
            out.append(chr(int(m.group(), 8)))
            i += 1 + m.end()
        else:
            out.append("\\" + nxt)
            i += 2
    return "".join(out)


def _read_word(s: str, i: int) -> Word:
    start, n = i, len(s)
    out: list[str] = []
    quoted = unterminated = False
    while i < n:
        c = s[i]
        if c in _METACHARS:
            # process substitution <(...) / >(...) at the start of a word is part of the word
            if c in "<>" and i == start and i + 1 < n and s[i + 1] == "(":
                j = _skip_balanced(s, i + 1, "(", ")")
                if j is None:
                    return Word(start, n, s[start:], quoted, True, s[start:])
                out.append(s[i:j])
                i = j
                continue
            break
        if c == "\\":
            quoted = True
            if i + 1 >= n:
                out.append(c)
                i += 1
            elif s[i + 1] == "\n":
                i += 2
            else:
                out.append(s[i + 1])
                i += 2
        elif c == "'":
            quoted = True
            j = s.find("'", i + 1)
            if j < 0:
                out.append(s[i + 1 :])
                i, unterminated = n, True
            else:
                out.append(s[i + 1 : j])
                i = j + 1
        elif c == '"' or (c == "$" and s.startswith('$"', i)):
            quoted = True
            first = i + (2 if c == "$" else 1)
            j, value = _scan_double(s, first)
            out.append(value)
            if j is None:
                i, unterminated = n, True
            else:
                i = j
        elif c == "$" and s.startswith("$'", i):
            quoted = True
            j = i + 2
            while j < n and s[j] != "'":
                j += 2 if s[j] == "\\" else 1
            if j >= n:
                out.append(_decode_ansi_c(s[i + 2 :]))
                i, unterminated = n, True
            else:
                out.append(_decode_ansi_c(s[i + 2 : j]))
                i = j + 1
        elif c == "$" and i + 1 < n and s[i + 1] in "({":
            j = _skip_balanced(s, i + 1, s[i + 1], ")" if s[i + 1] == "(" else "}")
            if j is None:
                out.append(s[i:])
                i, unterminated = n, True
            else:
                out.append(s[i:j])
                i = j
        elif c == "`":
            j = i + 1
            while j < n and s[j] != "`":
                j += 2 if s[j] == "\\" else 1
            if j >= n:
                out.append(s[i:])
                i, unterminated = n, True
            else:
                out.append(s[i : j + 1])
                i = j + 1
        else:
            out.append(c)
            i += 1
    return Word(start, i, "".join(out), quoted, unterminated, s[start:i])


def _unquoted_heredoc_body(text: str) -> str:
    """Bash's backslash handling in an unquoted-delimiter heredoc body (no expansion)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "$`\\\n":
            if text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _read_heredoc(s: str, pos: int, doc: HereDoc, lenient: bool) -> int:
    """Fill `doc` from the body starting at `pos`; return the index after it. Unterminated
    bodies run to the end of input (as in bash). `lenient` (for send_message's own heredoc)
    also accepts trailing blanks / CR after the delimiter."""
    n = len(s)
    doc.body_start = pos
    lines: list[str] = []
    i = pos
    while i < n:
        nl = s.find("\n", i)
        line_end = n if nl < 0 else nl
        line = s[i:line_end]
        after = n if nl < 0 else nl + 1
        candidate = line.lstrip("\t") if doc.op == "<<-" else line
        if candidate == doc.delimiter or (lenient and candidate.rstrip(" \t\r") == doc.delimiter):
            doc.terminated = True
            doc.body_end = after
            break
        lines.append(line.lstrip("\t") if doc.op == "<<-" else line)
        i = after
    else:
        doc.body_end = n
    body = "\n".join(lines)
    doc.content = body if doc.quoted else _unquoted_heredoc_body(body)
    return doc.body_end


def lex(s: str) -> list[Word | Op | Redir]:
    tokens: list[Word | Op | Redir] = []
    pending: list[tuple[HereDoc, bool]] = []
    command_words: list[Word] = []  # the current simple command's words (heredoc leniency)
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t":
            i += 1
            continue
        if c == "\\" and s.startswith("\\\n", i):
            i += 2
            continue
        if c == "#":  # a comment: only reached at the start of a word
            nl = s.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c == "\n":
            newline = Op(i, i + 1, "\n")
            tokens.append(newline)
            i += 1
            for doc, lenient in pending:
                i = _read_heredoc(s, i, doc, lenient)
            newline.resume = i
            pending.clear()
            command_words = []
            continue
        # redirection, optionally with an fd number (`2>&1`)
        m = _FD_PREFIX.match(s, i) if c.isdigit() else None
        j = m.end() if m else i
        redir = (
            next((op for op in _REDIR_OPS if s.startswith(op, j)), None) if s[j] in "<>&" else None
        )
        if redir and not (redir in ("<", ">") and s.startswith("(", j + 1)):
            k = j + len(redir)
            while k < n and s[k] in " \t":
                k += 1
            target = _read_word(s, k) if k < n and s[k] not in _METACHARS else None
            end = target.end if target else j + len(redir)
            token = Redir(i, end, redir, target)
            if redir in ("<<", "<<-"):
                if target is not None:
                    token.heredoc = HereDoc(redir, target.value, target.quoted)
                    first = next((w for w in command_words if not w.is_assignment), None)
                    lenient = first is not None and first.value == "send_message"
                    pending.append((token.heredoc, lenient))
            tokens.append(token)
            i = end
            continue
        op = None
        if c in "&;|()":
            op = next((op for op in _CONTROL_OPS if s.startswith(op, i)), None)
        if op:
            tokens.append(Op(i, i + len(op), op))
            i += len(op)
            command_words = []
            continue
        word = _read_word(s, i)
        if word.end == i:  # defensive: never loop forever
            word = Word(i, i + 1, c, False, False, c)
        tokens.append(word)
        command_words.append(word)
        i = word.end
    for doc, _ in pending:  # heredoc operator on the last line: empty, unterminated body
        doc.body_start = doc.body_end = n
    return tokens
