"""Chat rendering: the ONE way a conversation becomes prompt token ids.

TITO (training rows), the serving layer (student prompts) and the probes all render through
:func:`render_ids`, so a training prompt and an inference prompt for the same messages are the
same ids by construction -- the seed's format-drift failures (tools missing from the training
system prompt, ``enable_thinking`` injecting an empty think block at inference only, the XML
tool call rewritten by the template) were all two different renderers disagreeing.

- :func:`template_messages`: trajectory messages -> OpenAI-shaped copies an HF chat template
  accepts (``extra`` dropped, tool-call ``arguments`` JSON strings parsed to dicts, ``None``
  content -> ``""``).
- :func:`render_ids`: ``tokenizer.apply_chat_template`` over those copies, ids out.
- :func:`assistant_target_text`: the assistant turn the student must emit, as text: the
  reasoning/prose content, then each command as the Qwen inline XML tool call
  (:func:`coop_dag.agent.actions.to_qwen_xml`), parts joined by one newline -- the same framing the
  Qwen3 template uses between content and tool calls, so a tools-aware template that renders
  history tool calls as Qwen XML reproduces the target text exactly (which is what lets TITO
  pack a trajectory into one row).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from coop_dag.agent.actions import split_content_and_calls, to_qwen_xml

# Keys of a chat message an HF template may read; everything else (``extra``: timestamps,
# token capture, actions) is ours.
_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content")


def sha256_text(text: str) -> str:
    """Hex sha256 of a text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI multi-part content
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _tool_call(tc: Any) -> dict:
    fn = tc.get("function") if isinstance(tc, dict) else getattr(tc, "function", None)
    if isinstance(fn, dict):
        name, args = fn.get("name"), fn.get("arguments")
    else:
        name, args = getattr(fn, "name", None), getattr(fn, "arguments", None)
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            args = parsed  # unparseable or non-object arguments stay the raw string
    elif args is None:
        args = {}
    else:
        args = copy.deepcopy(args)
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    call_id = tc.get("id") if isinstance(tc, dict) else getattr(tc, "id", None)
    if call_id is not None:
        out["id"] = call_id
    return out


def template_messages(messages: Iterable[dict]) -> list[dict]:
    """OpenAI-shaped copies of trajectory messages for an HF chat template.

    Drops ``extra`` (and any other non-OpenAI key), turns tool-call ``arguments`` JSON
    strings into dicts (templates ``tojson`` them), makes ``content`` a string (``None`` ->
    ``""``: Qwen templates call string methods on it). The input is not modified.
    """
    out = []
    for msg in messages:
        m: dict[str, Any] = {k: msg[k] for k in _MESSAGE_KEYS if k in msg and msg[k] is not None}
        m["role"] = msg.get("role")
        m["content"] = _content_text(msg.get("content"))
        if msg.get("tool_calls"):
            m["tool_calls"] = [_tool_call(tc) for tc in msg["tool_calls"]]
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


def render_text(
    tokenizer: Any,
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    **template_kwargs: Any,
) -> str:
    """The rendered prompt as text (for display and debugging; train and serve on ids)."""
    return tokenizer.apply_chat_template(
        template_messages(messages),
        tools=list(tools) if tools else None,
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **template_kwargs,
    )


def encode_rendered(tokenizer: Any, text: str) -> list[int]:
    """Ids of a rendered prompt text, as ``apply_chat_template(tokenize=True)`` makes them
    (the template writes the special tokens itself: none are added)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids and isinstance(ids[0], list):  # defensive: a batched return
        ids = ids[0]
    return [int(i) for i in ids]


def render_ids(
    tokenizer: Any,
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    **template_kwargs: Any,
) -> list[int]:
    """Prompt token ids of ``messages`` under ``tokenizer``'s chat template (or
    ``chat_template``). ``template_kwargs`` (e.g. ``enable_thinking=False``) go to the
    template. This is the one renderer TITO, the serving layer and the probes share; it is
    :func:`render_text` then :func:`encode_rendered` (callers that need the text too use the
    two halves and get the same ids)."""
    text = render_text(
        tokenizer,
        messages,
        tools,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        **template_kwargs,
    )
    return encode_rendered(tokenizer, text)


def assistant_target_text(content: str | None, commands: Sequence[str]) -> str:
    """The assistant turn the student must emit for a teacher turn.

    ``content`` is the teacher's text (reasoning / prose). A tool call it already wrote
    inline (Qwen XML or hermes JSON) and the text after it are dropped, as vLLM's tool
    parsers do, so calls are never duplicated; leading blank space is dropped. Then each
    executed command in ``commands`` as :func:`coop_dag.agent.actions.to_qwen_xml`: one newline
    between the prose and the first call (none added when the prose already ends with one)
    and between calls -- the framing of the students' tools-aware templates
    (``configs/chat_templates/smollm2_tools.jinja``), so a history turn re-renders as exactly
    this text. A ``<think>`` span in ``content`` is kept here; TITO strips it at token level.
    """
    text = _content_text(content)
    prose, inline_calls = split_content_and_calls(text)
    prose = (prose or "") if inline_calls else text
    prose = prose.lstrip()
    if not prose.strip():
        prose = ""
    calls = "\n".join(to_qwen_xml(c) for c in commands)
    if not calls:
        return prose
    separator = "\n" if prose and not prose.endswith("\n") else ""
    return prose + separator + calls


def chat_template_text(tokenizer: Any, chat_template: str | None = None) -> str:
    """The template text in effect: ``chat_template`` if given, else the tokenizer's."""
    template = chat_template if chat_template is not None else tokenizer.chat_template
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default") or next(iter(template.values()))
    if not template:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template "
            "and none was given"
        )
    return template


def chat_template_sha256(tokenizer: Any, chat_template: str | None = None) -> str:
    return sha256_text(chat_template_text(tokenizer, chat_template))


def tokenizer_sha256(tokenizer: Any) -> str:
    """A tokenizer's content fingerprint: the sha256 of its ``tokenizer.json`` bytes when it
    was loaded from a directory holding one (the identity ``coop_dag.training.students`` records),
    else of the fast tokenizer's serialised definition, else of its vocabulary."""
    source = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer.json"
    if source.is_file():
        return hashlib.sha256(source.read_bytes()).hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return sha256_text(backend.to_str())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return sha256_text(json.dumps(vocab, ensure_ascii=False))
