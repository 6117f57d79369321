import json

import pytest

from coop_dag.agent.actions import (
    BASH_TOOL,
    NO_TOOL_CALLS_ERROR,
    SUBMIT_COMMAND,
    FormatError,
    diagnose_format_error,
    find_inline_calls,
    format_error_message,
    format_error_user_message,
    parse_actions,
    split_content_and_calls,
    to_qwen_xml,
)


def tc(command, *, name="bash", id="call_0", as_dict=False):
    args = {"command": command} if as_dict else json.dumps({"command": command})
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


QWEN_LS = """Let me look around first.
<tool_call>
<function=bash>
<parameter=command>
ls -la
</parameter>
</function>
</tool_call>"""

HEREDOC = "send_message agent2 <<'MSG'\nPlan: I edit src/a.py (lines 1-20).\n  indented line\nMSG"

NASTY_COMMANDS = [
    "ls -la",
    "",
    "\n",
    "  leading and trailing spaces  ",
    "\nblank lines around\n\n",
    HEREDOC,
    "cat > f.py <<'EOF'\ndef f():\n    return 1\nEOF",
    "printf 'a\\tb\\n' | cut -f2",
    'python -c "import json; print(json.dumps({\\"a\\": 1}))"',
    "grep -n '<tool_call>' trajectories/*.json",
    "grep -rn '</parameter>' src",
    "sed -i 's#</function></tool_call>##' out.txt",
    "echo '<parameter=command>'",
    "cat > example.txt <<'X'\n" + to_qwen_xml("ls") + "\nX",
    "echo '</think>' && echo '<think>'",
    '<tool_call>{"name": "bash", "arguments": {"command": "x"}}</tool_call>',
    "unicode: déjà vu — 漢字 ✓",
]


def test_bash_tool_schema():
    fn = BASH_TOOL["function"]
    assert BASH_TOOL["type"] == "function" and fn["name"] == "bash"
    assert fn["parameters"]["required"] == ["command"]
    assert fn["parameters"]["properties"]["command"]["type"] == "string"


def test_tool_calls_only():
    assert parse_actions(None, [tc("ls")]) == ["ls"]
    assert parse_actions("", [tc("git status", as_dict=True)]) == ["git status"]


def test_tool_calls_take_precedence_over_content():
    assert parse_actions(to_qwen_xml("pwd"), [tc("ls")]) == ["ls"]


def test_tool_calls_as_sdk_objects():
    class Fn:
        name = "bash"
        arguments = '{"command": "whoami"}'

    class Call:
        id = "call_9"
        function = Fn()

    assert parse_actions(None, [Call()]) == ["whoami"]


def test_invalid_tool_calls_fall_back_to_content():
    bad = [
        {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{not json"}},
        tc("ls", name="python"),
        {"id": "c", "type": "function", "function": {"name": "bash", "arguments": "{}"}},
    ]
    assert parse_actions(None, bad) == []
    assert parse_actions(to_qwen_xml("ls"), bad) == ["ls"]


def test_content_qwen_xml_only():
    assert parse_actions(QWEN_LS, None) == ["ls -la"]
    assert parse_actions(QWEN_LS, []) == ["ls -la"]


def test_qwen_xml_whitespace_tolerant():
    compact = "<tool_call><function=bash><parameter=command>ls</parameter></function></tool_call>"
    assert parse_actions(compact, None) == ["ls"]
    loose = (
        "<tool_call>\n\n  <function=bash>\n  <parameter=command>\nls\n</parameter>\n"
        "  </function>\n\n</tool_call>\n"
    )
    assert parse_actions(loose, None) == ["ls"]


def test_qwen_xml_unterminated_call_at_end():
    assert parse_actions("<tool_call>\n<function=bash>\n<parameter=command>\nls -la\n", None) == [
        "ls -la"
    ]
    assert parse_actions(
        "<tool_call>\n<function=bash>\n<parameter=command>\nls\n</parameter>\n", None
    ) == ["ls"]


def test_hermes_json():
    text = (
        'I will list.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls -la"}}\n'
        "</tool_call>"
    )
    assert parse_actions(text, None) == ["ls -la"]
    stringified = (
        '<tool_call>{"name": "bash", "arguments": "{\\"command\\": \\"pwd\\"}"}</tool_call>'
    )
    assert parse_actions(stringified, None) == ["pwd"]


def test_markdown_bash_is_not_an_action():
    text = "I'll list the files:\n```bash\nls -la\n```"
    assert parse_actions(text, None) == []
    assert parse_actions(text, []) == []


def test_narration_is_not_an_action():
    text = (
        '让我看看。 Let me check.\n[Makes bash tool call with {"command": "ls -la"} as arguments]'
    )
    assert parse_actions(text, None) == []


def test_bare_json_is_not_an_action():
    assert parse_actions('{"name": "bash", "arguments": {"command": "ls"}}', None) == []


def test_multiple_calls():
    text = "First.\n" + to_qwen_xml("ls") + "\nThen:\n" + to_qwen_xml(HEREDOC) + to_qwen_xml("pwd")
    assert parse_actions(text, None) == ["ls", HEREDOC, "pwd"]
    mixed = (
        to_qwen_xml("ls")
        + '\n<tool_call>\n{"name": "bash", "arguments": {"command": "pwd"}}\n</tool_call>'
    )
    assert parse_actions(mixed, None) == ["ls", "pwd"]
    assert parse_actions(None, [tc("a", id="1"), tc("b", id="2")]) == ["a", "b"]


def test_non_bash_inline_calls_are_skipped():
    text = (
        "<tool_call>\n<function=python>\n<parameter=code>\nprint(1)\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    assert parse_actions(text, None) == []
    assert parse_actions(text + to_qwen_xml("ls"), None) == ["ls"]


@pytest.mark.parametrize("command", NASTY_COMMANDS)
def test_round_trip(command):
    assert parse_actions(to_qwen_xml(command), None) == [command]
    surrounded = (
        "Prose first.\n" + to_qwen_xml(command) + "\nmore prose\n" + to_qwen_xml("pwd") + "\n"
    )
    assert parse_actions(surrounded, None) == [command, "pwd"]


def test_to_qwen_xml_exact_form():
    assert to_qwen_xml("ls -la") == (
        "<tool_call>\n<function=bash>\n<parameter=command>\nls -la\n"
        "</parameter>\n</function>\n</tool_call>"
    )


def test_reasoning_span_is_not_an_action():
    inside = "<think>\nMaybe " + to_qwen_xml("rm -rf /") + "\nno.\n</think>\n\n" + to_qwen_xml("ls")
    assert parse_actions(inside, None) == ["ls"]
    # Qwen3.5 shape: the template opened <think> in the prompt, output starts inside it.
    bare = "I think " + to_qwen_xml("rm -rf /") + " is wrong.\n</think>\n\n" + to_qwen_xml("ls")
    assert parse_actions(bare, None) == ["ls"]
    assert parse_actions("<think>\n\n</think>\n\n" + to_qwen_xml("ls"), None) == ["ls"]


def test_split_content_and_calls_qwen():
    content, calls = split_content_and_calls(
        "I will list.\n" + to_qwen_xml("ls") + to_qwen_xml(HEREDOC)
    )
    assert content == "I will list.\n"
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert all(c["type"] == "function" and c["function"]["name"] == "bash" for c in calls)
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"command": "ls"},
        {"command": HEREDOC},
    ]
    # the result feeds parse_actions unchanged
    assert parse_actions(content, calls) == ["ls", HEREDOC]


def test_split_content_and_calls_hermes_and_ids():
    text = (
        '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
        "trailing is dropped"
    )
    content, calls = split_content_and_calls(text, first_id=7)
    assert content is None
    assert calls == [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "bash", "arguments": '{"command": "ls"}'},
        }
    ]


def test_split_content_without_calls():
    assert split_content_and_calls("just text") == ("just text", [])
    assert split_content_and_calls("") == (None, [])
    assert split_content_and_calls(None) == (None, [])
    md = "```bash\nls\n```"
    assert split_content_and_calls(md) == (md, [])


def test_find_inline_calls_spans():
    text = "abc " + to_qwen_xml("ls") + " xyz"
    (call,) = find_inline_calls(text)
    assert text[call.start : call.end] == to_qwen_xml("ls")
    assert call.name == "bash" and call.arguments == {"command": "ls"}


def test_format_error_message():
    msg = format_error_message()
    assert NO_TOOL_CALLS_ERROR in msg and "<error>" in msg
    assert SUBMIT_COMMAND in msg
    assert '{"command": "your_command_here"}' in msg
    assert format_error_message("x", submit_command="echo DONE").count("echo DONE") == 1
    user = format_error_user_message()
    assert user["role"] == "user" and user["content"] == msg
    assert user["extra"] == {"interrupt_type": "FormatError"}
    err = FormatError("Unknown tool 'python'.")
    assert "Unknown tool 'python'." in err.message
    assert err.as_user_message()["content"] == err.message


def test_diagnose_format_error():
    assert diagnose_format_error("hello", None) == NO_TOOL_CALLS_ERROR
    assert "markdown" in diagnose_format_error("```bash\nls\n```", None)
    assert "text" in diagnose_format_error(
        '[Makes bash tool call with {"command": "ls"} as arguments]', None
    )
    assert "Unknown tool 'python'" in diagnose_format_error(None, [tc("x", name="python")])
    bad = {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{oops"}}
    assert diagnose_format_error(None, [bad]).startswith("Error parsing tool call arguments")
    missing = {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
    assert "Missing 'command'" in diagnose_format_error(None, [missing])
