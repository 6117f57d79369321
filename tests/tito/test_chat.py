"""coop_dag.tito.chat: template copies, the one renderer, the student's target text."""

from __future__ import annotations

import hashlib
import json

import pytest

from coop_dag import CONFIG_DIR
from coop_dag.agent.actions import BASH_TOOL, parse_actions, to_qwen_xml
from coop_dag.tito.chat import (
    assistant_target_text,
    chat_template_sha256,
    render_ids,
    render_text,
    sha256_text,
    template_messages,
    tokenizer_sha256,
)
from coop_dag.tito.tokens import load_tokenizer, qwen3_tokenizer_dir


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("Qwen3", qwen3_tokenizer_dir())


def _call(command: str, call_id: str = "call_1") -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "bash", "arguments": json.dumps({"command": command})},
    }


MESSAGES = [
    {"role": "system", "content": "You are an engineer."},
    {"role": "user", "content": "## Your Task\n\nDo it."},
    {
        "role": "assistant",
        "content": "I'll look first.",
        "tool_calls": [_call("ls -la")],
        "extra": {"timestamp": 1.0, "actions": ["ls -la"], "token_capture": {"x": 1}},
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "a.py", "extra": {"returncode": 0}},
]


def test_template_messages_drops_extra_and_parses_arguments():
    before = json.dumps(MESSAGES, sort_keys=True)
    out = template_messages(MESSAGES)
    assert json.dumps(MESSAGES, sort_keys=True) == before  # input untouched
    assert all("extra" not in m for m in out)
    call = out[2]["tool_calls"][0]
    assert call["function"] == {"name": "bash", "arguments": {"command": "ls -la"}}
    assert call["id"] == "call_1" and call["type"] == "function"
    assert out[3] == {"role": "tool", "tool_call_id": "call_1", "content": "a.py"}


def test_template_messages_edge_cases():
    msgs = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "bash", "arguments": "{not json"}}
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "x", "tool_calls": []},
    ]
    out = template_messages(msgs)
    assert out[0]["content"] == ""
    assert out[0]["tool_calls"][0]["function"]["arguments"] == "{not json"  # kept raw
    assert out[1]["content"] == "ab"
    assert "tool_calls" not in out[2]


def test_render_ids_is_the_template_tokenised(tok):
    ids = render_ids(tok, MESSAGES, [BASH_TOOL])
    text = render_text(tok, MESSAGES, [BASH_TOOL])
    assert ids == tok.encode(text, add_special_tokens=False)
    direct = tok.apply_chat_template(
        template_messages(MESSAGES),
        tools=[BASH_TOOL],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert ids == direct  # the same ids HF's own tokenize=True path makes
    assert "# Tools" in text and '"name": "bash"' in text  # the tool reaches the prompt
    assert "token_capture" not in text and "timestamp" not in text
    assert text.endswith("<|im_start|>assistant\n")
    no_gen = render_text(tok, MESSAGES, [BASH_TOOL], add_generation_prompt=False)
    assert not no_gen.endswith("<|im_start|>assistant\n")
    # template kwargs pass through: Qwen3's enable_thinking=False closes an empty think block
    off = render_text(tok, MESSAGES, [BASH_TOOL], enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_render_ids_custom_template(tok):
    template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    ids = render_ids(tok, MESSAGES[:2], chat_template=template, add_generation_prompt=False)
    assert tok.decode(ids) == "[system]You are an engineer.[user]## Your Task\n\nDo it."
    assert chat_template_sha256(tok, template) == sha256_text(template)
    assert chat_template_sha256(tok) == sha256_text(tok.chat_template)


def test_assistant_target_text():
    text = assistant_target_text("  I'll look first.\n", ["ls -la", "cat a.py"])
    assert text == "I'll look first.\n" + to_qwen_xml("ls -la") + "\n" + to_qwen_xml("cat a.py")
    assert parse_actions(text, None) == ["ls -la", "cat a.py"]
    assert assistant_target_text(None, ["ls"]) == to_qwen_xml("ls")
    assert assistant_target_text("", []) == ""


@pytest.mark.parametrize("content", ["I'll look first.", "I'll look first.\n", "", "  Spaced.  "])
@pytest.mark.parametrize("commands", [["ls -la"], ["ls", "cat 'a b.py' | head -3"]])
def test_assistant_target_text_is_how_the_student_template_renders_history(tok, content, commands):
    path = CONFIG_DIR / "chat_templates" / "smollm2_tools.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    msg = {
        "role": "assistant",
        "content": content.lstrip(),
        "tool_calls": [_call(c, f"call_{i}") for i, c in enumerate(commands)],
    }
    text = render_text(tok, [msg], add_generation_prompt=False, chat_template=path.read_text())
    body = text.split("<|im_start|>assistant\n", 1)[1]
    assert body.endswith("<|im_end|>\n")
    assert body[: -len("<|im_end|>\n")] == assistant_target_text(content, commands)


def test_assistant_target_text_does_not_duplicate_inline_calls():
    # a teacher that already wrote the call inline (no structured tool_calls)
    content = "Checking.\n" + to_qwen_xml("ls") + "\ntrailing words"
    text = assistant_target_text(content, ["ls"])
    assert text == "Checking.\n" + to_qwen_xml("ls")
    hermes = 'Go.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    assert assistant_target_text(hermes, ["ls"]) == "Go.\n" + to_qwen_xml("ls")


def test_sha256_and_tokenizer_fingerprint(tok):
    assert sha256_text("abc") == hashlib.sha256(b"abc").hexdigest()
    fp = tokenizer_sha256(tok)
    assert len(fp) == 64 and fp == tokenizer_sha256(tok)
