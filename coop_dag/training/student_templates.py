"""Chat templates and tokens of a student, without a tokenizer object: the content hash of a
template (``text_sha256``), rendering exactly as ``apply_chat_template(tokenize=False)``,
which of the think shapes a template has (`coop_dag.training.students.THINK_SHAPES`), a
token's id in ``tokenizer.json``, and the template a Hugging Face model dir carries.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_template_text(
    chat_template: str,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render a template exactly as ``tokenizer.apply_chat_template(tokenize=False)`` does,
    without a tokenizer. (Prompt ids come from ``coop_dag.tito.chat.render_ids``.)"""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return rendered[0]


def detect_think_shape(chat_template: str) -> str:
    """Which of :data:`THINK_SHAPES` a template has, found by rendering a one-turn probe."""
    probe = [{"role": "user", "content": "hi"}]
    base = render_template_text(chat_template, probe)
    tail = render_template_text(chat_template, probe, add_generation_prompt=True)
    tail = tail[len(base) :] if tail.startswith(base) else tail
    if "<think>" in tail:
        return "closed" if "</think>" in tail else "qwen3.5"
    if "<think>" not in chat_template:
        return "none"
    off = render_template_text(
        chat_template, probe, add_generation_prompt=True, enable_thinking=False
    )
    off = off[len(base) :] if off.startswith(base) else off
    return "qwen3" if "<think>" in off and "</think>" in off else "unknown"


def tokenizer_json_token_id(tokenizer_json: Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).token_to_id(token)


def dir_chat_template(model_dir: Path) -> str | None:
    """The chat template a Hugging Face dir carries (chat_template.jinja, else the
    tokenizer_config.json / chat_template.json field; the 'default' of named templates)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for fname in ("tokenizer_config.json", "chat_template.json"):
        f = model_dir / fname
        if not f.is_file():
            continue
        try:
            template = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str) and template:
            return template
    return None
