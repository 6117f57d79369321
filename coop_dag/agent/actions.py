"""Agent actions: the one `bash` tool, parsing commands out of a model turn, rendering them
in the Qwen inline XML the student emits, and the feedback sent when nothing parses.

A model turn yields bash commands in one of three surface forms, checked in this order:

1. OpenAI-shape ``tool_calls`` (API teachers, vLLM with a tool parser):
   ``{"id", "type": "function",
   "function": {"name": "bash", "arguments": "{\\"command\\": ...}"}}``.
2. Qwen3-Coder inline XML in ``content`` (the student, vLLM without a tool parser)::

       <tool_call>
       <function=bash>
       <parameter=command>
       ls -la
       </parameter>
       </function>
       </tool_call>

3. Hermes-style JSON in ``content``:
   ``<tool_call>{"name": "bash", "arguments": {...}}</tool_call>``.

A markdown ```bash block, a bare JSON object, or narration such as
``[Makes bash tool call with {"command": "ls"} as arguments]`` is *not* an action: the
seed report's students regressed to exactly these forms, and counting them would hide the
regression (the agent loop answers them with :func:`format_error_message` instead).

Parameter values follow vLLM's qwen3_coder parser: exactly one newline after the opening
tag and one before the closing tag are framing, everything else is the value, so
``parse_actions(to_qwen_xml(c)) == [c]`` for any command ``c`` — including commands that
themselves contain the tags (heredocs writing tool-call examples, greps for
``</parameter>``): nested pairs are skipped and stray closing tags extend the value; the
only commands that cannot round-trip put a stray *closing* call tag before a stray
*opening* one (see :func:`_find_close`). A ``<tool_call>`` inside a
leading ``<think>…</think>`` span (or before a bare ``</think>``, the Qwen3.5 shape where the
template opened the span) is reasoning, not an action.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

BASH_TOOL: dict = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Execute a bash command",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": "The bash command to execute",
                }
            },
            "required": ["command"],
        },
    },
}

SUBMIT_COMMAND = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"

NO_TOOL_CALLS_ERROR = (
    "No tool calls found in the response. Every response MUST include at least one tool call."
)

FORMAT_ERROR_TEMPLATE = """Tool call error:

<error>
{error}
</error>

Here is general guidance on how to submit correct tool calls:

Every response needs to call the 'bash' tool at least once to execute commands.

Call the bash tool with your command as the argument:
- Tool: bash
- Arguments: {{"command": "your_command_here"}}

A markdown ```bash code block, or a description of a tool call written as text, is not \
executed: only a real tool call runs.

If you want to end the task, issue the following command: `{submit_command}`
without any other command."""


def format_error_message(
    error: str = NO_TOOL_CALLS_ERROR, *, submit_command: str = SUBMIT_COMMAND
) -> str:
    """The text the agent loop sends back as a user message when no action parses."""
    return FORMAT_ERROR_TEMPLATE.format(error=error.strip(), submit_command=submit_command)


def format_error_user_message(
    error: str = NO_TOOL_CALLS_ERROR, *, submit_command: str = SUBMIT_COMMAND
) -> dict:
    """:func:`format_error_message` as a chat message (``extra.interrupt_type`` as CooperBench)."""
    return {
        "role": "user",
        "content": format_error_message(error, submit_command=submit_command),
        "extra": {"interrupt_type": "FormatError"},
    }


class FormatError(Exception):
    """No action parsed from a model turn. ``error`` is the specific reason; ``message`` the
    full feedback text for the model."""

    def __init__(self, error: str = NO_TOOL_CALLS_ERROR, *, submit_command: str = SUBMIT_COMMAND):
        self.error = error
        self.message = format_error_message(error, submit_command=submit_command)
        super().__init__(error)

    def as_user_message(self) -> dict:
        return {"role": "user", "content": self.message, "extra": {"interrupt_type": "FormatError"}}


# --------------------------------------------------------------------------------------
# Qwen inline XML / hermes JSON in generated text
# --------------------------------------------------------------------------------------

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_FUNCTION_OPEN = re.compile(r"\s*<function=([^>\n]+)>")
_CALL_EVENTS = re.compile(r"(?P<open><tool_call>)|(?P<close></function>\s*</tool_call>)")
_PARAM_OPEN = re.compile(r"\s*<parameter=([^>\n]+)>")
_PARAM_EVENTS = re.compile(r"(?P<open><parameter=[^>\n]+>)|(?P<close></parameter>)")
_HERMES_CLOSE = re.compile(r"\s*</tool_call>")


@dataclass(frozen=True)
class InlineCall:
    """One tool call found in generated text; ``start``/``end`` delimit it in that text."""

    name: str
    arguments: dict
    start: int
    end: int


def to_qwen_xml(command: str) -> str:
    """Render a bash command in the exact Qwen3-Coder inline tool-call form."""
    return (
        "<tool_call>\n<function=bash>\n<parameter=command>\n"
        f"{command}\n"
        "</parameter>\n</function>\n</tool_call>"
    )


def _strip_framing_newline(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _reasoning_end(text: str) -> int:
    """Offset where the non-reasoning part of ``text`` starts. Reasoning is a leading
    ``<think>…</think>`` span, or everything before a bare ``</think>`` (the Qwen3.5 shape,
    whose template opens the span in the prompt). A ``<think>``/``</think>`` that first
    appears after a ``<tool_call>`` is part of a command and ignored."""
    first_call = text.find(TOOL_CALL_OPEN)
    if first_call == -1:
        first_call = len(text)
    opening = text.find(THINK_OPEN)
    if opening != -1 and opening < first_call:
        close = text.find(THINK_CLOSE, opening)
        return close + len(THINK_CLOSE) if close != -1 else 0
    close = text.find(THINK_CLOSE)
    if close != -1 and close < first_call:
        return close + len(THINK_CLOSE)
    return 0


def _find_close(text: str, pos: int, events: re.Pattern, end: int | None = None) -> re.Match | None:
    """The closing tag ending an element whose content starts at ``pos``.

    Content may itself contain the tags (a heredoc writing a tool-call example, a grep for
    ``</parameter>``), so: nested open/close pairs are skipped, and consecutive closes with
    no opening between them extend the element to the last one (an unmatched close inside
    a value). An opening after a candidate close starts the next element. If nesting never
    balances (an unmatched opening inside a value) the count is dropped and the rule is
    applied to closes alone."""
    stop = len(text) if end is None else end
    for nested in (True, False):
        depth = 0
        best = None
        for m in events.finditer(text, pos, stop):
            if m.group("open"):
                if best is not None and depth == 0:
                    break
                if nested:
                    depth += 1
            elif depth > 0:
                depth -= 1
            else:
                best = m
        if best is not None:
            return best
    return None


def _parse_xml_params(body: str) -> dict[str, str]:
    """Parameters of one ``<function=...>`` body (values are strings; a missing closing tag
    runs to the end of the body)."""
    params: dict[str, str] = {}
    pos = 0
    while True:
        m = _PARAM_OPEN.match(body, pos) or _PARAM_OPEN.search(body, pos)
        if m is None:
            break
        name = m.group(1).strip()
        close = _find_close(body, m.end(), _PARAM_EVENTS)
        if close is None:
            params[name] = _strip_framing_newline(body[m.end() :].rstrip(" \t"))
            break
        params[name] = _strip_framing_newline(body[m.end() : close.start()])
        pos = close.end()
    return params


def _parse_hermes(text: str, pos: int) -> tuple[dict, int] | None:
    """``{"name": ..., "arguments": ...}`` starting at ``pos`` (after optional whitespace),
    followed by ``</tool_call>`` (or the end of text). Returns (call dict, end offset)."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        return None
    try:
        obj, end = json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    close = _HERMES_CLOSE.match(text, end)
    if close is not None:
        end = close.end()
    elif text[end:].strip():
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}, end


def find_inline_calls(text: str | None) -> list[InlineCall]:
    """All tool calls written inline in ``text`` (Qwen XML or hermes JSON), in order."""
    if not text:
        return []
    begin = _reasoning_end(text)
    calls = _scan_calls(text, begin)
    # A bare </think> in the prose *after* some calls (Qwen3.5 shape: the output starts
    # inside a reasoning span the template opened) ends reasoning: calls before it were
    # thought about, not made. A </think> inside a call is part of its command.
    close = text.find(THINK_CLOSE, begin)
    while close != -1 and any(c.start <= close < c.end for c in calls):
        close = text.find(THINK_CLOSE, close + 1)
    if close != -1 and calls and calls[0].start < close:
        calls = [c for c in calls if c.start > close]
    return calls


def _scan_calls(text: str, pos: int) -> list[InlineCall]:
    calls: list[InlineCall] = []
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start == -1:
            break
        inner = start + len(TOOL_CALL_OPEN)
        fn = _FUNCTION_OPEN.match(text, inner)
        if fn is not None:
            close = _find_close(text, fn.end(), _CALL_EVENTS)
            if close is None:  # unterminated (generation cut off): runs to the end
                body, end = text[fn.end() :].rstrip(), len(text)
                for tail in (TOOL_CALL_CLOSE, "</function>"):
                    if body.endswith(tail):
                        body = body[: -len(tail)].rstrip()
            else:
                body, end = text[fn.end() : close.start()], close.end()
            calls.append(InlineCall(fn.group(1).strip(), _parse_xml_params(body), start, end))
            pos = end
            continue
        hermes = _parse_hermes(text, inner)
        if hermes is not None:
            call, end = hermes
            calls.append(InlineCall(call["name"], call["arguments"], start, end))
            pos = end
            continue
        pos = inner
    return calls


def split_content_and_calls(
    text: str | None, *, first_id: int = 0
) -> tuple[str | None, list[dict]]:
    """Raw generated text → (content before the first call, OpenAI ``tool_calls``).

    As vLLM's qwen3_coder / hermes tool parsers: text before the first call is the content
    (``None`` when blank), text after the last call is dropped, argument values from XML
    are strings. Ids are ``call_<n>`` counting from ``first_id``. Without any call the
    whole text is the content and ``tool_calls`` is empty.
    """
    calls = find_inline_calls(text)
    if not calls:
        return (text if text else None), []
    assert text is not None
    content = text[: calls[0].start]
    tool_calls = [
        {
            "id": f"call_{first_id + i}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for i, c in enumerate(calls)
    ]
    return (content if content.strip() else None), tool_calls


# --------------------------------------------------------------------------------------
# parse_actions
# --------------------------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _tool_call_args(tool_call: Any) -> tuple[str | None, dict | None, str | None]:
    """(name, arguments, error) of one OpenAI-shape tool call (dict or SDK object)."""
    function = _get(tool_call, "function")
    if function is None:
        return None, None, "Tool call has no 'function'."
    name = _get(function, "name")
    raw = _get(function, "arguments")
    if isinstance(raw, dict):
        return name, raw, None
    if raw is None or raw == "":
        return name, {}, None
    try:
        args = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        return name, None, f"Error parsing tool call arguments: {e}."
    if not isinstance(args, dict):
        return name, None, "Tool call arguments must be a JSON object."
    return name, args, None


def _bash_command(name: Any, args: dict | None) -> str | None:
    if name != "bash" or not isinstance(args, dict):
        return None
    command = args.get("command")
    return command if isinstance(command, str) else None


def parse_actions(content: str | None, tool_calls: list[dict] | None) -> list[str]:
    """Bash commands of one model turn: from ``tool_calls`` when any of them is a valid bash
    call, otherwise from tool calls written inline in ``content``. ``[]`` means no action
    (the caller answers with :func:`format_error_message`)."""
    commands: list[str] = []
    for tc in tool_calls or []:
        name, args, _ = _tool_call_args(tc)
        command = _bash_command(name, args)
        if command is not None:
            commands.append(command)
    if commands:
        return commands
    for call in find_inline_calls(content):
        command = _bash_command(call.name, call.arguments)
        if command is not None:
            commands.append(command)
    return commands


_MARKDOWN_BASH = re.compile(r"```(?:bash|sh|shell|console)?\s*\n")
_NARRATION = re.compile(
    r"\[\s*(?:makes?|making|calls?|calling|invokes?)\b[^\]]*\btool\s*call", re.I
)


def diagnose_format_error(content: str | None, tool_calls: list[dict] | None) -> str:
    """The specific ``<error>`` text for a turn where :func:`parse_actions` found nothing."""
    for tc in tool_calls or []:
        name, args, error = _tool_call_args(tc)
        if error:
            return error
        if name != "bash":
            return f"Unknown tool '{name}'. The only tool is 'bash'."
        if _bash_command(name, args) is None:
            return "Missing 'command' argument in bash tool call."
    for call in find_inline_calls(content):
        if call.name != "bash":
            return f"Unknown tool '{call.name}'. The only tool is 'bash'."
        if _bash_command(call.name, call.arguments) is None:
            return "Missing 'command' argument in bash tool call."
    text = content or ""
    if _MARKDOWN_BASH.search(text):
        return NO_TOOL_CALLS_ERROR + " A markdown code block is not a tool call."
    if _NARRATION.search(text):
        return NO_TOOL_CALLS_ERROR + " Describing a tool call in text does not make one."
    return NO_TOOL_CALLS_ERROR
