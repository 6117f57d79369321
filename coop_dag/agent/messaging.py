"""Agent-to-agent messaging over Redis, CooperBench's scheme, plus the `send_message` parser.

Redis layout (CooperBench's `MessagingConnector`, with the run namespace given explicitly
rather than as a `#run:<id>` URL fragment):

    <run_prefix>:<agent>:inbox    list of JSON {"from", "to", "content", "timestamp"}
    <run_prefix>:<agent>:alive    float timestamp, set when the agent starts
    <run_prefix>:<agent>:exited   float timestamp, set when the agent finishes

`run_prefix` is `run:<id>` (see `new_run_prefix`), so keys read `run:ab12cd34:agent1:inbox`
exactly as CooperBench's. Timestamps are always floats (`time.time()`): CooperBench 0.0.8
crashed sorting a conversation with mixed int/str timestamps, so foreign ISO strings are
coerced on receipt too.

conversation.json follows CooperBench: every agent keeps a record of what it sent
(`MessageBus.sent_messages()`), and the runner merges the records with
`conversation_records()`, sorted by timestamp.

`parse_send_message(command)` pulls `send_message [--wait] <agent> ...` calls out of a bash
tool command (the only tool the model has, as in CooperBench's mini_swe_agent_v2); the
runtime delivers them and runs `remainder` in the sandbox.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "DEFAULT_TTL",
    "MessageBus",
    "MessagingError",
    "OutgoingMessage",
    "ParsedCommand",
    "PartnerExited",
    "SendMessageParseError",
    "UnknownRecipient",
    "conversation_records",
    "departure_notice",
    "format_inbox",
    "new_run_prefix",
    "parse_send_message",
]

DEFAULT_TTL = 7 * 24 * 3600  # keys expire after a week, so a shared cluster Redis never fills up


# --------------------------------------------------------------------------------------------
# errors


class MessagingError(RuntimeError):
    """Base class. The agent runtime turns any of these into a non-zero tool return code
    whose output is `str(error)`."""


class PartnerExited(MessagingError):
    """The recipient has exited; the message was not delivered."""

    def __init__(self, partner: str) -> None:
        super().__init__(
            f"{partner} has exited and can no longer receive messages; "
            "the message was not delivered. Continue on your own."
        )
        self.partner = partner


class UnknownRecipient(MessagingError):
    def __init__(self, recipient: str, agents: Iterable[str]) -> None:
        names = ", ".join(agents)
        super().__init__(f"unknown recipient {recipient!r}; agents in this run: {names}")
        self.recipient = recipient


class SendMessageParseError(MessagingError, ValueError):
    """A `send_message` call in command position that cannot be delivered as written
    (unterminated heredoc or quote, missing recipient or body, inside a pipeline or a
    compound command). The runtime reports it and runs *nothing* from that command."""


# --------------------------------------------------------------------------------------------
# the bus


def new_run_prefix(run_id: str | None = None) -> str:
    """CooperBench's namespace for one episode: `run:<8 hex>`."""
    return f"run:{run_id or uuid.uuid4().hex[:8]}"


def _coerce_timestamp(value: Any, default: float) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return default


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# Atomic "deliver unless the recipient has exited": a message is either in the inbox before the
# recipient's exited flag is set, or refused. KEYS: inbox, exited. ARGV: payload, ttl.
_SEND_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""


class MessageBus:
    """One agent's view of a run's mailboxes.

    `client` is a `redis.Redis` (see `coop_dag.agent.redis_server.connect`); bytes or str responses
    both work. `agents`, if given, is the run's roster: sending to anyone else raises
    `UnknownRecipient`. Safe to share between threads.
    """

    def __init__(
        self,
        client: Any,
        run_prefix: str,
        agent_id: str,
        *,
        agents: Iterable[str] | None = None,
        ttl: int | None = DEFAULT_TTL,
    ) -> None:
        if not agent_id:
            raise ValueError("agent_id must be non-empty")
        self.client = client
        self.run_prefix = run_prefix.rstrip(":")
        self.agent_id = agent_id
        self.agents = list(agents) if agents is not None else None
        self.ttl = int(ttl or 0)
        self._sent: list[dict] = []
        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._send_script = client.register_script(_SEND_LUA)

    # keys ------------------------------------------------------------------------------------
    def _key(self, agent: str, kind: str) -> str:
        return f"{self.run_prefix}:{agent}:{kind}"

    def inbox_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "inbox")

    def alive_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "alive")

    def exited_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "exited")

    # sending ---------------------------------------------------------------------------------
    def send(self, to: str, content: str) -> dict:
        """Push `{from, to, content, timestamp}` onto `to`'s inbox and record it.

        Raises `PartnerExited` if `to` has exited, `UnknownRecipient` if a roster was given and
        `to` is not on it, `MessagingError` for a message to oneself.
        """
        if to == self.agent_id:
            raise MessagingError(f"{self.agent_id} cannot send a message to itself")
        if self.agents is not None and to not in self.agents:
            raise UnknownRecipient(to, [a for a in self.agents if a != self.agent_id])
        message = {
            "from": self.agent_id,
            "to": to,
            "content": str(content),
            "timestamp": time.time(),
        }
        result = self._send_script(
            keys=[self.inbox_key(to), self.exited_key(to)],
            args=[json.dumps(message), self.ttl],
        )
        if int(result) < 0:
            raise PartnerExited(to)
        with self._lock:
            self._sent.append(dict(message))
        return dict(message)

    def sent_messages(self) -> list[dict]:
        """Every message this bus delivered, in order (copies), for conversation.json."""
        with self._lock:
            return [dict(m) for m in self._sent]

    # receiving -------------------------------------------------------------------------------
    def receive(self) -> list[dict]:
        """Pop every pending message, oldest first. Timestamps come back as floats."""
        key = self.inbox_key()
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw_messages, _ = pipe.execute()
        now = time.time()
        return [self._decode(raw, now) for raw in raw_messages]

    def pending(self) -> int:
        """How many messages wait in this agent's inbox, without consuming them."""
        return int(self.client.llen(self.inbox_key()))

    def _decode(self, raw: Any, now: float) -> dict:
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            message = None
        if not isinstance(message, dict):  # a foreign writer pushed something odd
            message = {"content": _text(raw)}
        message.setdefault("from", "unknown")
        message.setdefault("to", self.agent_id)
        message["content"] = "" if message.get("content") is None else str(message["content"])
        message["timestamp"] = _coerce_timestamp(message.get("timestamp"), now)
        return message

    def wait_for_reply(self, partner: str, timeout: float, poll: float = 0.2) -> list[dict]:
        """Block until a message arrives (returns everything popped, at least one message),
        `partner` exits (returns whatever it sent before exiting, possibly `[]`), or `timeout`
        seconds pass (`[]`). `partner_exited(partner)` tells the last two apart."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Exited is read *before* draining: a partner's messages are pushed before its
            # exited flag is set, so once the flag is seen, this drain holds all of them.
            exited = self.partner_exited(partner)
            messages = self.receive()
            if messages or exited:
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(poll, remaining))

    # presence --------------------------------------------------------------------------------
    def mark_alive(self) -> None:
        self.client.set(self.alive_key(), repr(time.time()), ex=self.ttl or None)

    def mark_exited(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.exited_key(), repr(time.time()), ex=self.ttl or None)
        pipe.delete(self.alive_key())
        pipe.execute()

    def is_alive(self, agent: str) -> bool:
        return bool(self.client.exists(self.alive_key(agent)))

    def partner_exited(self, partner: str) -> bool:
        return bool(self.client.exists(self.exited_key(partner)))

    def new_departures(self, partners: Iterable[str] | None = None) -> list[str]:
        """Partners that have exited and were not reported by an earlier call: feed each to
        `departure_notice` once. `partners` defaults to the roster minus this agent."""
        if partners is None:
            partners = [a for a in (self.agents or []) if a != self.agent_id]
        fresh = []
        for partner in partners:
            if partner not in self._announced and self.partner_exited(partner):
                self._announced.add(partner)
                fresh.append(partner)
        return fresh

    def reset(self) -> None:
        """Delete this agent's inbox, alive and exited keys. Only for reusing a run prefix, and
        only before any partner can send: a reset after a partner's send loses that message."""
        self.client.delete(self.inbox_key(), self.alive_key(), self.exited_key())


# --------------------------------------------------------------------------------------------
# trajectory / conversation formatting


def format_inbox(messages: Iterable[dict]) -> list[dict]:
    """Inbox deliveries as trajectory user messages, CooperBench's wording:
    `[Message from agent1]: <content>`."""
    now = time.time()
    formatted = []
    for m in messages:
        sender = m.get("from", "unknown")
        formatted.append(
            {
                "role": "user",
                "content": f"[Message from {sender}]: {m.get('content', '')}",
                "extra": {
                    "timestamp": now,
                    "inbox": {
                        "from": sender,
                        "to": m.get("to"),
                        "sent_at": _coerce_timestamp(m.get("timestamp"), now),
                    },
                },
            }
        )
    return formatted


def departure_notice(partner: str) -> dict:
    """The one-time user message telling an agent its partner has exited. Deliberately not
    `[Message from ...]`, so it never counts as an inbox delivery."""
    return {
        "role": "user",
        "content": (
            f"[Notice]: {partner} has finished and exited. It will not read or answer further "
            "messages; continue your own task."
        ),
        "extra": {"timestamp": time.time(), "notice": "partner_exited", "partner": partner},
    }


def conversation_records(
    sent_messages: Iterable[dict], feature_ids: Mapping[str, int] | None = None
) -> list[dict]:
    """conversation.json in CooperBench's shape — `{from, to, message, timestamp, feature_id}`
    — from the union of every agent's `sent_messages()`, sorted by (float) timestamp."""
    feature_ids = feature_ids or {}
    records = [
        {
            "from": m.get("from"),
            "to": m.get("to"),
            "message": m.get("content", m.get("message", "")),
            "timestamp": _coerce_timestamp(m.get("timestamp"), 0.0),
            "feature_id": feature_ids.get(m.get("from")),
        }
        for m in sent_messages
    ]
    records.sort(key=lambda r: r["timestamp"])
    return records


# --------------------------------------------------------------------------------------------
# send_message parsing
#
# A small bash lexer: words (with bash quoting rules), control operators, redirections and
# here-document bodies. It only has to find where simple commands start, so that a
# `send_message` counts only in command position and never inside a string, a comment or
# another command's heredoc body. Nothing is expanded: `$VAR`, `$(...)` and backticks in a
# message are delivered literally (the message never reaches a shell).


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    content: str
    wait: bool = False


@dataclass(frozen=True)
class ParsedCommand:
    messages: list[OutgoingMessage] = field(default_factory=list)
    remainder: str = ""


_METACHARS = frozenset(" \t\n;&|()<>")
_CONTROL_OPS = ("&&", "||", ";;&", ";;", ";&", "|&", ";", "&", "|", "(", ")")
_REDIR_OPS = ("<<<", "<<-", "<<", "&>>", "&>", "<>", "<&", ">&", ">>", ">|", "<", ">")
_OPEN_WORDS = frozenset({"if", "while", "until", "for", "select", "{", "case"})
_CLOSE_WORDS = frozenset({"fi", "done", "}", "esac"})
_PREFIX_WORDS = frozenset({"then", "do", "else", "elif", "!", "time"})
_FD_PREFIX = re.compile(r"\d+(?=[<>])")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_RECIPIENT = re.compile(r"^[A-Za-z0-9_.-]+$")
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
class _Word:
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
class _HereDoc:
    op: str  # "<<" or "<<-"
    delimiter: str
    quoted: bool
    body_start: int = -1
    body_end: int = -1  # end of the closing delimiter line, including its newline
    content: str = ""
    terminated: bool = False


@dataclass
class _Redir:
    start: int
    end: int
    op: str
    target: _Word | None
    heredoc: _HereDoc | None = None


@dataclass
class _Op:
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


def _read_word(s: str, i: int) -> _Word:
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
                    return _Word(start, n, s[start:], quoted, True, s[start:])
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
    return _Word(start, i, "".join(out), quoted, unterminated, s[start:i])


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


def _read_heredoc(s: str, pos: int, doc: _HereDoc, lenient: bool) -> int:
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


def _lex(s: str) -> list[_Word | _Op | _Redir]:
    tokens: list[_Word | _Op | _Redir] = []
    pending: list[tuple[_HereDoc, bool]] = []
    command_words: list[_Word] = []  # the current simple command's words (heredoc leniency)
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
            newline = _Op(i, i + 1, "\n")
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
            token = _Redir(i, end, redir, target)
            if redir in ("<<", "<<-"):
                if target is not None:
                    token.heredoc = _HereDoc(redir, target.value, target.quoted)
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
            tokens.append(_Op(i, i + len(op), op))
            i += len(op)
            command_words = []
            continue
        word = _read_word(s, i)
        if word.end == i:  # defensive: never loop forever
            word = _Word(i, i + 1, c, False, False, c)
        tokens.append(word)
        command_words.append(word)
        i = word.end
    for doc, _ in pending:  # heredoc operator on the last line: empty, unterminated body
        doc.body_start = doc.body_end = n
    return tokens


@dataclass
class _Segment:
    items: list[_Word | _Redir] = field(default_factory=list)
    depth: int = 0
    line: int = 0  # logical-line index
    before: _Op | None = None  # control operator joining it to the previous segment
    after: _Op | None = None

    @property
    def start(self) -> int:
        return self.items[0].start

    @property
    def end(self) -> int:
        return self.items[-1].end

    def command_word(self) -> _Word | None:
        for item in self.items:
            if isinstance(item, _Word):
                if not item.is_assignment:
                    return item
            else:
                return None  # a redirection before the command word: not our form
        return None


def _segments(
    tokens: list[_Word | _Op | _Redir], length: int
) -> tuple[list[_Segment], list[tuple[int, int]]]:
    """Simple commands with their nesting depth and logical line; plus each logical line's
    span (from after the previous line's heredoc bodies to its terminating newline)."""
    segments: list[_Segment] = []
    current = _Segment()
    depth = 0
    case_depth = 0
    line = 0
    line_spans: list[tuple[int, int]] = []
    line_start = 0
    last_op: _Op | None = None
    at_command = True

    def close(op: _Op | None) -> None:
        nonlocal current
        if current.items:
            current.after = op
            segments.append(current)
        current = _Segment(depth=depth, line=line, before=op)

    for tok in tokens:
        if isinstance(tok, _Op):
            if tok.op == "\n":
                continues = last_op is not None and last_op.op in ("&&", "||", "|", "|&")
                if continues and not current.items:
                    continue  # a newline after a binary operator continues the line
                close(tok)
                line_spans.append((line_start, tok.end))
                line += 1
                line_start = tok.resume
                current.line = line
                current.before = tok
                last_op, at_command = tok, True
                continue
            if tok.op == "(" and case_depth == 0:
                close(tok)
                depth += 1
                current.depth = depth
            elif tok.op == ")" and case_depth == 0:
                close(tok)
                depth = max(0, depth - 1)
                current.depth = depth
            else:
                close(tok)
            last_op, at_command = tok, True
            continue
        # word or redirection
        if isinstance(tok, _Word) and at_command and not tok.quoted:
            if tok.value in _OPEN_WORDS:
                close(None)
                depth += 1
                if tok.value == "case":
                    case_depth += 1
                current.depth = depth
                at_command = tok.value == "{"
                last_op = None
                continue
            if tok.value in _CLOSE_WORDS:
                close(None)
                depth = max(0, depth - 1)
                if tok.value == "esac":
                    case_depth = max(0, case_depth - 1)
                current.depth = depth
                last_op = None
                continue
            if tok.value in _PREFIX_WORDS:
                close(None)
                current.depth = depth
                last_op = None
                continue
        if not current.items:
            current.depth, current.line = depth, line
        current.items.append(tok)
        if isinstance(tok, _Word) and not tok.is_assignment:
            at_command = False
        last_op = None
    close(None)
    line_spans.append((line_start, length))
    return segments, line_spans


def _parse_send(seg: _Segment) -> OutgoingMessage:
    wait = False
    recipient: str | None = None
    content_words: list[str] = []
    heredocs: list[_HereDoc] = []
    herestrings: list[_Word] = []
    options_done = False
    seen_command = False
    for item in seg.items:
        if isinstance(item, _Redir):
            if item.op in ("<<", "<<-"):
                if item.heredoc is None:
                    raise SendMessageParseError("send_message: heredoc `<<` without a delimiter")
                heredocs.append(item.heredoc)
            elif item.op == "<<<":
                if item.target is None:
                    raise SendMessageParseError("send_message: here-string `<<<` without text")
                herestrings.append(item.target)
            elif item.op in ("<", "<>", "<&"):
                raise SendMessageParseError(
                    "send_message cannot read its message from a file; put the text in a "
                    "heredoc or in quotes"
                )
            continue  # output redirections are meaningless for a message: ignored
        word = item
        if word.unterminated:
            raise SendMessageParseError(
                f"send_message: unterminated quote in {word.value[:40]!r}; message not sent"
            )
        if not seen_command:
            if word.value == "send_message":
                seen_command = True
            continue  # leading VAR=value assignments
        if word.value == "--wait" and (not word.quoted or (recipient is None and not options_done)):
            wait = True
            continue
        if recipient is None and not options_done:
            if word.value == "--":
                options_done = True
                continue
            if word.value.startswith("-"):
                raise SendMessageParseError(
                    f"send_message: unknown option {word.value!r} (usage: "
                    "send_message [--wait] <agent> <<'MSG' ... MSG)"
                )
        if recipient is None:
            recipient = word.value
            continue
        content_words.append(word.value)
    if recipient is None:
        raise SendMessageParseError(
            "send_message needs a recipient: send_message [--wait] <agent> <<'MSG' ... MSG"
        )
    if not _RECIPIENT.match(recipient):
        raise SendMessageParseError(f"send_message: invalid recipient {recipient!r}")
    sources = bool(content_words) + len(heredocs) + len(herestrings)
    if sources > 1:
        raise SendMessageParseError(
            f"send_message to {recipient}: give the message once (a heredoc, a quoted string "
            "or a here-string), not several"
        )
    if heredocs:
        doc = heredocs[0]
        if not doc.terminated:
            raise SendMessageParseError(
                f"send_message to {recipient}: unterminated heredoc, no line {doc.delimiter!r} "
                "closes the message; nothing was sent or run"
            )
        content = doc.content
    elif herestrings:
        content = herestrings[0].value
    else:
        content = " ".join(content_words)
    if not content.strip():
        raise SendMessageParseError(f"send_message to {recipient}: empty message")
    return OutgoingMessage(to=recipient, content=content, wait=wait)


def _cut(s: str, ranges: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for a, b in sorted(ranges):
        if b <= pos:
            continue
        a = max(a, pos)
        out.append(s[pos:a])
        pos = b
    out.append(s[pos:])
    return "".join(out)


def _skip_blanks(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _skip_blanks_back(s: str, i: int) -> int:
    while i > 0 and s[i - 1] in " \t":
        i -= 1
    return i


def _merge_blank_gaps(s: str, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join ranges separated only by spaces/tabs (never across a newline, which could sit
    before a kept command's heredoc body)."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(pieces):
        if merged and not s[merged[-1][1] : a].strip(" \t"):
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def parse_send_message(command: str) -> ParsedCommand:
    """Split a bash tool command into the messages it sends and the rest to execute.

    Recognised, only where a command starts (start of input, after a newline, `;`, `&&`,
    `||`, `&`): `send_message [--wait] <agent> [--wait]` followed by exactly one of

    * a heredoc: `<<'MSG'`, `<<"EOF"`, `<<MSG`, `<<-TAG` (any delimiter; trailing blanks on
      the closing line are tolerated); the body, minus its final newline, is the message;
    * one or more words, quoted as bash quotes them (`"..."` with `\\"`, `\\\\`, `\\$`,
      `` \\` `` unescaped and `\\n` kept literally, as bash does; `'...'`; `$'...'` with C
      escapes); several words are joined by one space;
    * a here-string `<<< "..."`.

    Nothing is expanded: `$VAR`, `$(...)` and backticks are delivered literally. Occurrences
    inside strings, comments or other commands' heredoc bodies (`grep send_message f`,
    `echo "send_message a b"`, `cat <<EOF ... send_message ... EOF`) are not calls.

    The runtime delivers `messages` in order and then runs `remainder` (identical to
    `command` when there is no call; `""` when nothing else is left). Removing a call keeps the
    remaining commands' connectors sensible: `make && send_message a "x"; ls` leaves
    `make; ls`. Sends therefore happen before the remainder runs, whatever their position.

    Malformed calls raise `SendMessageParseError` (a `MessagingError`) instead of being
    ignored: an unterminated heredoc or quote, no recipient, no or empty body, several bodies,
    reading from a file, `send_message` in a pipeline, or inside a compound command
    (`if`/`for`/`while`/`case`/`{ }`/`( )`/function). Treating them as "no message" would let
    bash swallow the rest of the command as heredoc text or fail with "command not found"
    while the agent believes it talked to its partner; the runtime should instead return a
    non-zero code with the error text and run nothing from the command.
    """
    if "send_message" not in command:
        return ParsedCommand([], command)
    tokens = _lex(command)
    segments, line_spans = _segments(tokens, len(command))
    sends: list[_Segment] = []
    messages: list[OutgoingMessage] = []
    for seg in segments:
        word = seg.command_word()
        if word is None or word.value != "send_message":
            continue
        if seg.depth > 0:
            raise SendMessageParseError(
                "send_message must be a top-level command, not inside if/for/while/case, "
                "{ ... }, ( ... ) or a function; message not sent"
            )
        if any(op is not None and op.op in ("|", "|&") for op in (seg.before, seg.after)):
            raise SendMessageParseError(
                "send_message cannot be part of a pipeline; pass the message in a heredoc "
                "or in quotes"
            )
        messages.append(_parse_send(seg))
        sends.append(seg)
    if not sends:
        return ParsedCommand([], command)

    removed = {id(seg) for seg in sends}
    ranges: list[tuple[int, int]] = []
    for seg in sends:  # the sends' own heredoc bodies
        for item in seg.items:
            if isinstance(item, _Redir) and item.heredoc and item.heredoc.body_start >= 0:
                ranges.append((item.heredoc.body_start, item.heredoc.body_end))

    by_line: dict[int, list[_Segment]] = {}
    for seg in segments:
        by_line.setdefault(seg.line, []).append(seg)
    for line_no, segs in by_line.items():
        if not any(id(s) in removed for s in segs):
            continue
        if all(id(s) in removed for s in segs):  # the whole logical line goes
            ranges.append(line_spans[line_no])
            continue
        # mixed line: cut each run of removed segments together with one connector
        i = 0
        while i < len(segs):
            if id(segs[i]) not in removed:
                i += 1
                continue
            j = i
            while j + 1 < len(segs) and id(segs[j + 1]) in removed:
                j += 1
            before, after = segs[i].before, segs[j].after
            has_prev = i > 0
            has_next = j + 1 < len(segs)
            pieces: list[tuple[int, int]] = []
            for k in range(i, j + 1):
                pieces.append((segs[k].start, segs[k].end))
                if k < j and segs[k].after is not None:
                    pieces.append((segs[k].after.start, segs[k].after.end))
            # Which connector goes with the run (A = command before it, B = after it):
            #   A && S && B  -> A && B   (the one after, when it is && or ||)
            #   A && S; B    -> A; B     (else the one before, when it is && or ||)
            #   A &&\n S; B  -> A\n B   (both, when a line continuation lies between A and B:
            #                             the newline separates, no connector starts a line)
            #   A; S && B    -> A; B     (else the one after)
            #   A; S;        -> A;       (a trailing `;`/`&` goes with the run;
            #   A && S;      -> A         with the one before, too)
            binary = ("&&", "||")
            next_op = after.op if has_next and after is not None else None
            prev_binary = has_prev and before is not None and before.op in binary
            if next_op in binary:
                pieces.append((after.start, _skip_blanks(command, after.end)))
            elif prev_binary:
                pieces.append((_skip_blanks_back(command, before.start), before.end))
                trailing = not has_next and after is not None and after.op in (";", "&")
                continued = next_op is not None and any(
                    "\n" in command[segs[k].end : segs[k + 1].start] for k in range(i - 1, j + 1)
                )
                if trailing or continued:
                    pieces.append((after.start, after.end))
            elif after is not None and after.op in (";", "&") and (has_next or not has_prev):
                pieces.append((after.start, _skip_blanks(command, after.end)))
            elif after is not None and after.op in (";", "&"):
                pieces.append((_skip_blanks_back(command, segs[i].start), after.end))
            else:  # `a; send_message ...` -> `a;`, `a & send_message ...` -> `a &`
                pieces.append((_skip_blanks_back(command, segs[i].start), segs[i].start))
            ranges.extend(_merge_blank_gaps(command, pieces))
            i = j + 1
    remainder = _cut(command, ranges)
    if not remainder.strip():
        remainder = ""
    return ParsedCommand(messages, remainder)
