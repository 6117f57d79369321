"""`parse_send_message(command)` pulls `send_message [--wait] <agent> ...` calls out of a bash
tool command (the only tool the model has, as in CooperBench's mini_swe_agent_v2); the
runtime delivers them and runs `remainder` in the sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from coop_dag.agent.messaging.errors import SendMessageParseError
from coop_dag.agent.messaging.lexer import HereDoc, Redir, Word, lex
from coop_dag.agent.messaging.segments import Segment, split_segments

_RECIPIENT = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    content: str
    wait: bool = False


@dataclass(frozen=True)
class ParsedCommand:
    messages: list[OutgoingMessage] = field(default_factory=list)
    remainder: str = ""


def _parse_send(seg: Segment) -> OutgoingMessage:
    wait = False
    recipient: str | None = None
    content_words: list[str] = []
    heredocs: list[HereDoc] = []
    herestrings: list[Word] = []
    options_done = False
    seen_command = False
    for item in seg.items:
        if isinstance(item, Redir):
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
    segments, line_spans = split_segments(lex(command), len(command))
    messages, sends = _find_sends(segments)
    if not sends:
        return ParsedCommand([], command)
    remainder = _cut(command, _removal_ranges(command, segments, line_spans, sends))
    if not remainder.strip():
        remainder = ""
    return ParsedCommand(messages, remainder)


def _find_sends(segments: list[Segment]) -> tuple[list[OutgoingMessage], list[Segment]]:
    """The `send_message` calls among `segments`, parsed, and their segments. A call inside a
    compound command or a pipeline raises `SendMessageParseError`."""
    sends: list[Segment] = []
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
    return messages, sends


def _removal_ranges(
    command: str,
    segments: list[Segment],
    line_spans: list[tuple[int, int]],
    sends: list[Segment],
) -> list[tuple[int, int]]:
    """The spans of `command` to cut: the sends' own heredoc bodies, every logical line made
    only of sends, and in a mixed line each run of sends with one connector."""
    removed = {id(seg) for seg in sends}
    ranges: list[tuple[int, int]] = []
    for seg in sends:  # the sends' own heredoc bodies
        for item in seg.items:
            if isinstance(item, Redir) and item.heredoc and item.heredoc.body_start >= 0:
                ranges.append((item.heredoc.body_start, item.heredoc.body_end))

    by_line: dict[int, list[Segment]] = {}
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
            ranges.extend(_merge_blank_gaps(command, _run_pieces(command, segs, i, j)))
            i = j + 1
    return ranges


def _run_pieces(command: str, segs: list[Segment], i: int, j: int) -> list[tuple[int, int]]:
    """The spans that remove the run of sends `segs[i..j]` from a mixed line: the sends, the
    connectors between them, and the one connector that goes with the run."""
    pieces: list[tuple[int, int]] = []
    for k in range(i, j + 1):
        pieces.append((segs[k].start, segs[k].end))
        if k < j and segs[k].after is not None:
            pieces.append((segs[k].after.start, segs[k].after.end))
    return pieces + _run_connector(command, segs, i, j)


def _run_connector(command: str, segs: list[Segment], i: int, j: int) -> list[tuple[int, int]]:
    """The connector(s) removed with the run of sends `segs[i..j]` (A = the command before
    the run, B = the one after it, S = the run):

      A && S && B  -> A && B   (the one after, when it is && or ||)
      A && S; B    -> A; B     (else the one before, when it is && or ||)
      A &&\\n S; B  -> A\\n B   (both, when a line continuation lies between A and B:
                                the newline separates, no connector starts a line)
      A; S && B    -> A; B     (else the one after)
      A; S;        -> A;       (a trailing `;`/`&` goes with the run;
      A && S;      -> A         with the one before, too)
    """
    before, after = segs[i].before, segs[j].after
    has_prev = i > 0
    has_next = j + 1 < len(segs)
    binary = ("&&", "||")
    next_op = after.op if has_next and after is not None else None
    prev_binary = has_prev and before is not None and before.op in binary
    if next_op in binary:
        return [(after.start, _skip_blanks(command, after.end))]
    if prev_binary:
        pieces = [(_skip_blanks_back(command, before.start), before.end)]
        trailing = not has_next and after is not None and after.op in (";", "&")
        continued = next_op is not None and any(
            "\n" in command[segs[k].end : segs[k + 1].start] for k in range(i - 1, j + 1)
        )
        if trailing or continued:
            pieces.append((after.start, after.end))
        return pieces
    if after is not None and after.op in (";", "&") and (has_next or not has_prev):
        return [(after.start, _skip_blanks(command, after.end))]
    if after is not None and after.op in (";", "&"):
        return [(_skip_blanks_back(command, segs[i].start), after.end)]
    # `a; send_message ...` -> `a;`, `a & send_message ...` -> `a &`
    return [(_skip_blanks_back(command, segs[i].start), segs[i].start)]
