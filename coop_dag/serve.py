"""The embedded serving engine: an OpenAI-compatible HTTP server for a student and its LoRA
adapters, speaking the subset of vLLM's API the pipeline uses.

It is the laptop stand-in for ``vllm serve --enable-lora`` (see :mod:`coop_dag.vllm`): the
same routes, bodies and error shapes, so :class:`coop_dag.vllm.VllmEngine`,
:class:`coop_dag.models.LiteLLMChatModel` and :mod:`coop_dag.serving` work against either.

Routes
  ``GET /health``                 200 once the model is loaded (503 while loading).
  ``GET /v1/models``              the base model (``root`` = its directory) and every adapter
                                  (``root`` = the path it was loaded from, ``parent`` = base).
  ``POST /v1/chat/completions``   chat completions (below).
  ``POST /v1/completions``        raw completions of a text or token-id prompt (no template).
  ``POST /v1/load_lora_adapter``  ``{lora_name, lora_path[, load_inplace]}``: 200 text
                                  "Success: ..."; 400 when the name is loaded (current vLLM),
                                  the dir is not a servable adapter, or it was built for
                                  another base model; 404 when the path does not exist.
  ``POST /v1/unload_lora_adapter`` ``{lora_name}``: 200, or 404 for an unknown name.

Chat completions
  - Prompts are rendered by :func:`coop_dag.chat.render_ids` with the student's template -- the
    renderer the TITO stage uses -- so a served prompt is token for token a training prompt.
    ``tools`` are rendered when given; ``chat_template_kwargs`` go to the template (as in
    vLLM: nothing is injected by default, so ``enable_thinking`` only changes the prompt when a
    client asks for it). A request-supplied ``chat_template`` is refused.
  - Greedy unless ``temperature`` > 0 (then ``top_p`` / ``top_k`` / ``seed`` apply);
    ``max_tokens`` (or ``max_completion_tokens``) bounded by the context length; generation
    stops at the student's end-of-turn token (and the model's eos ids) or a ``stop`` string.
    vLLM's ``ignore_eos`` / ``min_tokens`` are honoured, ``n`` > 1 samples n times.
  - ``return_token_ids: true`` adds vLLM's top-level ``prompt_token_ids`` and per-choice
    ``token_ids`` (every generated id, tool-call markup and the end-of-turn id included).
  - With ``tools`` (and ``tool_choice`` auto), tool calls written as Qwen3-Coder inline XML or
    hermes JSON in ``<tool_call>`` are parsed into ``tool_calls`` by
    :func:`coop_dag.actions.split_content_and_calls` (text before the first call stays in
    ``content``), like vLLM's ``qwen3_coder`` / ``hermes`` parsers.
  - No reasoning parser unless configured (``reasoning_parser="qwen3"``): in the seed, vLLM's
    qwen3 reasoning parser moved a student's whole output -- tool calls included -- into
    ``reasoning``. When configured, only a leading, closed ``<think>...</think>`` span (or, for
    templates that open the span in the prompt, the text before the first ``</think>``) moves
    to ``reasoning_content``.
  - ``logprobs`` / ``top_logprobs`` return raw (pre-temperature) log-probabilities.

Adapters are PEFT LoRA dirs, checked before anything is touched (``adapter_config.json``,
weights, r/alpha/task_type, non-zero ``lora_B``: :func:`coop_dag.adapters.validate_adapter`;
the base model they name, and the tokenizer their ``lineage.json`` records, must be this
server's student). Each is loaded with ``PeftModel.load_adapter(path, adapter_name=...)``;
a request selects it with ``set_adapter``, the base with ``disable_adapter()``.

Concurrency: the HTTP server is threaded (health, model listing and request parsing never
wait for generation), but one lock guards the model: generation, adapter loads and unloads
are serialised, so a request never runs with another request's adapter active.

In process: ``EmbeddedServer(student, host, port).start()`` ... ``.stop()`` (or ``with``).
As a process: ``python -m coop_dag.serve --student tiny-qwen3 --port 8000`` (also
``coop-dag serve`` via :func:`serve_main`); it prints the URL, answers /health once ready,
and exits cleanly on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coop_dag.kv_cache import (
    DEFAULT_PREFIX_CACHE_TOKENS,
    PrefixCache,
    layer_slices,
    left_pad_stack,
    new_cache,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "REASONING_PARSERS",
    "ChatEngine",
    "EmbeddedServer",
    "Generation",
    "RequestError",
    "SamplingParams",
    "ServeError",
    "build_assistant_message",
    "build_parser",
    "free_port",
    "serve_main",
    "split_reasoning",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024  # a request without max_tokens: at most this many (CPU-friendly)
DEFAULT_MAX_BATCH = 32  # concurrent requests generated as one batch
DEFAULT_BATCH_WINDOW = 2.0  # at most this many seconds a batch waits for company...
DEFAULT_BATCH_GAP = 0.15  # ...and only while requests keep arriving this close together
REASONING_PARSERS = ("qwen3",)
TOOL_CHOICES = ("auto", "none")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16
MAX_TOP_LOGPROBS = 20


class ServeError(RuntimeError):
    """The server cannot start (port in use, bad student, bad startup adapter)."""


class RequestError(Exception):
    """A request the server refuses; becomes vLLM's error body
    ``{"error": {"message", "type", "param", "code"}}`` with HTTP status ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        err_type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or {
            400: "BadRequestError",
            404: "NotFoundError",
            503: "ServiceUnavailableError",
        }.get(status, "InternalServerError")
        self.param = param

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, err_type="BadRequestError", param=param)


# --------------------------------------------------------------------------------------
# Output parsing (no model needed: unit-testable with injected text)
# --------------------------------------------------------------------------------------

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"


def split_reasoning(text: str, *, think_shape: str = "none") -> tuple[str | None, str]:
    """``(reasoning, rest)`` of generated text, as a reasoning parser that only moves what
    is unambiguously reasoning: a leading, closed ``<think>...</think>`` span (whitespace
    before it allowed), or -- for ``think_shape="qwen3.5"``, whose template opens the span in
    the prompt -- the text before the first ``</think>`` when that comes before any
    ``<tool_call>``. Anything else is left alone: output that never closes a think span is
    *content* (the seed's parser called it reasoning and swallowed every tool call)."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        close = stripped.find(THINK_CLOSE)
        if close == -1:
            return None, text
        reasoning = stripped[len(THINK_OPEN) : close]
        rest = stripped[close + len(THINK_CLOSE) :]
        return reasoning.strip("\n") or None, rest.lstrip("\n")
    if think_shape == "qwen3.5":
        close = text.find(THINK_CLOSE)
        call = text.find(TOOL_CALL_OPEN)
        if close != -1 and (call == -1 or close < call):
            return text[:close].strip("\n") or None, text[close + len(THINK_CLOSE) :].lstrip("\n")
    return None, text


def build_assistant_message(
    text: str,
    *,
    parse_tools: bool,
    reasoning_parser: str | None = None,
    think_shape: str = "none",
) -> dict:
    """The OpenAI assistant message for generated ``text`` (special tokens already removed).

    With ``parse_tools`` (the request had tools, tool_choice auto), inline tool calls become
    ``tool_calls`` (ids ``chatcmpl-tool-<hex>``, as vLLM) and ``content`` is the text before
    the first call (``None`` when blank); text after the last call is dropped, as vLLM's
    parsers do. Without it the text is returned as is. ``reasoning_content`` is present only
    when a reasoning parser is configured."""
    from coop_dag.actions import split_content_and_calls

    reasoning = None
    rest = text
    if reasoning_parser:
        reasoning, rest = split_reasoning(text, think_shape=think_shape)
    message: dict[str, Any] = {"role": "assistant", "content": rest}
    calls: list[dict] = []
    if parse_tools:
        content, calls = split_content_and_calls(rest)
        for call in calls:
            call["id"] = f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"
        message["content"] = content if calls else rest
    message["tool_calls"] = calls
    if reasoning_parser:
        message["reasoning_content"] = reasoning
    return message


# --------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request (greedy when ``temperature`` is 0)."""

    max_tokens: int | None = None  # None: the server default, bounded by the context
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 / -1: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _opt_int(body: Mapping, key: str, *, low: int | None = None, high: int | None = None):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer, got {value!r}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise _bad(f"'{key}' must be {bounds}, got {value}", key)
    return value


def _opt_float(body: Mapping, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not _is_number(value) or not low <= float(value) <= high:
        raise _bad(f"'{key}' must be a number in [{low:g}, {high:g}], got {value!r}", key)
    return float(value)


def _opt_bool(body: Mapping, key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be true or false, got {value!r}", key)
    return value


def parse_sampling(body: Mapping) -> SamplingParams:
    """Decoding fields of a chat / completion request body (400 naming the field)."""
    max_tokens = _opt_int(body, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", low=1)
    temperature = _opt_float(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _opt_float(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise _bad("'top_p' must be in (0, 1]", "top_p")
    top_k = _opt_int(body, "top_k", low=-1)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(s for s in stop if s)
    else:
        raise _bad(f"'stop' must be a string or a list of strings, got {stop!r}", "stop")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _bad(f"'logprobs' must be true or false, got {logprobs!r}", "logprobs")
    top_logprobs = _opt_int(body, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS) or 0
    if top_logprobs and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=max(top_k or 0, 0),
        seed=_opt_int(body, "seed"),
        stop=stops,
        ignore_eos=_opt_bool(body, "ignore_eos"),
        min_tokens=_opt_int(body, "min_tokens", low=0) or 0,
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs,
        skip_special_tokens=_opt_bool(body, "skip_special_tokens", True),
    )


def _check_content(content: Any, where: str, *, allow_none: bool) -> None:
    if content is None:
        if not allow_none:
            raise _bad(f"{where}: content is required for this role", where)
        return
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(
                    f"{where}[{k}]: only text parts ({{'type': 'text', 'text': ...}}) are "
                    f"supported, got {part!r}"[:300],
                    f"{where}[{k}]",
                )
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{k}].text must be a string", f"{where}[{k}].text")
        return
    raise _bad(
        f"{where} must be a string, null or a list of text parts, got {type(content).__name__}",
        where,
    )


def validate_messages(messages: Any) -> list[dict]:
    """Check the shape of ``messages`` (400 naming the offending field)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of chat messages", "messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{where} must be an object, got {type(msg).__name__}", where)
        role = msg.get("role")
        if role not in ROLES:
            raise _bad(
                f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role"
            )
        calls = msg.get("tool_calls")
        if calls is not None and role != "assistant":
            raise _bad(f"{where}.tool_calls: only assistant messages carry tool calls", where)
        _check_content(msg.get("content"), f"{where}.content", allow_none=role == "assistant")
        if calls is None:
            continue
        if not isinstance(calls, list):
            raise _bad(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
        for j, tc in enumerate(calls):
            tw = f"{where}.tool_calls[{j}]"
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict):
                raise _bad(f"{tw}.function must be an object", f"{tw}.function")
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise _bad(f"{tw}.function.name must be a non-empty string", f"{tw}.function.name")
            args = fn.get("arguments")
            if args is not None and not isinstance(args, str | dict):
                raise _bad(
                    f"{tw}.function.arguments must be a JSON string or an object",
                    f"{tw}.function.arguments",
                )
    return messages


def validate_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list of function tools", "tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': ...}}", f"tools[{i}]")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name must be a non-empty string", f"tools[{i}]")
    return tools or None


def _tool_choice(body: Mapping) -> str:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    if choice in TOOL_CHOICES:
        return choice
    raise _bad(
        f"tool_choice {choice!r} is not supported by the embedded server (no guided decoding); "
        "use 'auto' or 'none'",
        "tool_choice",
    )


# --------------------------------------------------------------------------------------
# The engine: model, tokenizer, adapters, one lock
# --------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One generated sequence."""

    prompt_ids: list[int]
    output_ids: list[int]  # every generated id, the stop / end-of-turn id included
    text: str  # decoded (special tokens skipped), cut before a matched stop string
    finish_reason: str  # stop | length
    stop_reason: str | int | None = None  # the stop string or stop id that ended it
    logprobs: list[dict] | None = None  # OpenAI chat logprobs.content entries


@dataclass
class _Adapter:
    name: str
    path: str  # as the client gave it (what /v1/models reports as root)
    peft_name: str  # PEFT adapter names cannot contain '.': an internal id
    sha12: str
    created: int


class _CancelCriteria:
    """A StoppingCriteria that ends generation when the server is stopping."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@dataclass(eq=False)
class _Job:
    """One queued generation: a row of some batch."""

    prompt: list[int]
    adapter: _Adapter | None
    params: SamplingParams
    max_new: int
    done: threading.Event = field(default_factory=threading.Event)
    output: list[int] = field(default_factory=list)
    logits: list[Any] | None = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def group(self) -> tuple:
        """Rows of one batch share the adapter and the sampler; lengths and stops stay per
        row. A seeded request runs alone, so its seed alone decides its sample."""
        p = self.params
        if p.seed is not None:
            return ("seeded", id(self))
        min_new = self.max_new if p.ignore_eos else min(p.min_tokens, self.max_new)
        return (
            self.adapter.peft_name if self.adapter else None,
            p.greedy,
            None if p.greedy else (p.temperature, p.top_p, p.top_k),
            p.ignore_eos,
            min_new,
            p.logprobs,
        )


class _RowStops:
    """Per-row end of a batched ``generate``: a row ends at a stop id (after its minimum),
    at its own ``max_new`` or once its generated tail holds one of its stop strings.
    ``ended[i]`` is the generated length at which row ``i`` ended (the rest is padding)."""

    def __init__(self, engine: ChatEngine, jobs: Sequence[_Job], prompt_len: int, min_new: int):
        self.tokenizer = engine.tokenizer
        self.tok_lock = engine._tok_lock
        self.stop_ids = set(engine.stop_ids)
        self.jobs = list(jobs)
        self.prompt_len = prompt_len
        self.min_new = min_new
        self.ended: list[int | None] = [None] * len(jobs)

    def _stop_string(self, job: _Job, generated: list[int]) -> bool:
        window = max(len(s) for s in job.params.stop) + 16
        with self.tok_lock:
            tail = self.tokenizer.decode(generated[-window:], skip_special_tokens=False)
        return any(s in tail for s in job.params.stop)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        n = input_ids.shape[1] - self.prompt_len
        for i, job in enumerate(self.jobs):
            if self.ended[i] is not None:
                continue
            last = int(input_ids[i, -1])
            eos = not job.params.ignore_eos and last in self.stop_ids and n >= self.min_new
            if eos or n >= job.max_new:
                self.ended[i] = n
            elif job.params.stop:
                generated = input_ids[i, self.prompt_len :].tolist()
                if self._stop_string(job, generated):
                    self.ended[i] = n
        return torch.tensor([e is not None for e in self.ended], dtype=torch.bool)


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    sa, sb = os.fspath(a).rstrip("/"), os.fspath(b).rstrip("/")
    if sa == sb:
        return True
    with contextlib.suppress(OSError):
        return Path(sa).resolve() == Path(sb).resolve()
    return False


class ChatEngine:
    """A student model behind a lock, with PEFT adapters, answering OpenAI-shaped requests.

    ``student``: a :class:`coop_dag.students.Student` or a registry name (``None``: the
    registry default). ``served_model_name``: the base model's id (default: the student's
    name). ``base_aliases``: further names an adapter's ``base_model_name_or_path`` may use
    for this base (the student's name and model dir always match). Call :meth:`load` before
    serving (the :class:`EmbeddedServer` does)."""

    def __init__(
        self,
        student: Any = None,
        *,
        served_model_name: str | None = None,
        reasoning_parser: str | None = None,
        tool_call_parser: bool = True,
        max_model_len: int | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        base_aliases: Iterable[str] = (),
        dtype: Any = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        batch_gap: float = DEFAULT_BATCH_GAP,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
    ) -> None:
        if max_batch < 1:
            raise ServeError(f"max_batch must be >= 1, got {max_batch}")
        if reasoning_parser not in (None, "", *REASONING_PARSERS):
            raise ServeError(
                f"unknown reasoning parser {reasoning_parser!r} (known: "
                f"{', '.join(REASONING_PARSERS)}; default: none)"
            )
        if default_max_tokens < 1:
            raise ServeError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        self._student_arg = student
        self.student: Any = None
        self.served_model_name = served_model_name
        self.reasoning_parser = reasoning_parser or None
        self.tool_call_parser = tool_call_parser
        self._max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.base_aliases = tuple(base_aliases)
        self.dtype = dtype
        self.tokenizer: Any = None
        self.model: Any = None  # the plain base model
        self._peft: Any = None  # the PeftModel wrapping it once an adapter is loaded
        self._adapters: dict[str, _Adapter] = {}
        self._adapter_seq = 0
        self._model_lock = threading.Lock()  # generation, adapter loads and unloads
        self._state_lock = threading.Lock()  # the adapter table (never held while generating)
        self._tok_lock = threading.Lock()  # fast tokenizers are not re-entrant
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.batch_gap = batch_gap
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self._queue: list[_Job] = []  # waiting generations, oldest first
        self._cond = threading.Condition()  # the queue, the leader flag, finished jobs
        self._leading = False  # a request thread is running batches
        self._last_arrival = 0.0
        self.cancel = threading.Event()
        self.ready = threading.Event()
        self.created = int(time.time())
        self.stats = {"requests": 0, "generated_tokens": 0, "generation_seconds": 0.0}

    # -- setup -----------------------------------------------------------------------------
    def load(self) -> ChatEngine:
        """Resolve the student, load tokenizer and weights (idempotent)."""
        if self.ready.is_set():
            return self
        from coop_dag.students import Student, get_student

        student = self._student_arg
        if not isinstance(student, Student):
            student = get_student(student)
        self.student = student
        self.tokenizer = student.load_tokenizer()
        model = student.load_model(dtype=self.dtype)
        model.eval()
        self.model = model
        stop_ids = {int(student.eot_id)}
        eos = getattr(model.generation_config, "eos_token_id", None)
        for i in eos if isinstance(eos, list | tuple) else [eos]:
            if isinstance(i, int):
                stop_ids.add(i)
        self.stop_ids = sorted(stop_ids)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else int(student.eot_id)
        if self._max_model_len is None:
            self._max_model_len = int(
                getattr(model.config, "max_position_embeddings", None) or 4096
            )
        self.ready.set()
        return self

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            raise RequestError(503, "the model is still loading", err_type="ServiceUnavailable")

    @property
    def base_model_id(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.student is not None:
            return self.student.name
        return str(self._student_arg)

    @property
    def max_model_len(self) -> int:
        return int(self._max_model_len or 0)

    def describe(self) -> dict:
        s = self.student
        return {
            "base_model_id": self.base_model_id,
            "student": s.name if s else None,
            "model_dir": str(s.model_dir) if s else None,
            "tokenizer_sha256": s.tokenizer_sha256 if s else None,
            "chat_template_sha256": s.chat_template_sha256 if s else None,
            "max_model_len": self.max_model_len,
            "reasoning_parser": self.reasoning_parser,
            "tool_call_parser": "qwen3_coder+hermes" if self.tool_call_parser else None,
            "adapters": {a.name: a.path for a in self.adapters()},
            "batching": {"max_batch": self.max_batch, "gap_s": self.batch_gap},
            "stats": dict(self.stats),  # requests, batches, prefill vs cached prompt tokens
        }

    # -- models ----------------------------------------------------------------------------
    def adapters(self) -> list[_Adapter]:
        with self._state_lock:
            return list(self._adapters.values())

    def model_cards(self) -> list[dict]:
        base = {
            "id": self.base_model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "coop-dag",
            "root": str(self.student.model_dir) if self.student else None,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        cards = [base]
        for a in self.adapters():
            cards.append(
                {
                    "id": a.name,
                    "object": "model",
                    "created": a.created,
                    "owned_by": "coop-dag",
                    "root": a.path,
                    "parent": self.base_model_id,
                    "max_model_len": None,
                    "permission": [],
                }
            )
        return cards

    def resolve_model(self, name: Any) -> _Adapter | None:
        """The adapter a request's ``model`` selects (``None``: the base); 404 when unknown."""
        if name is None or name == self.base_model_id:
            return None
        if not isinstance(name, str):
            raise _bad(f"'model' must be a string, got {name!r}", "model")
        with self._state_lock:
            adapter = self._adapters.get(name)
            known = [self.base_model_id, *self._adapters]
        if adapter is None:
            raise RequestError(
                404,
                f"The model `{name}` does not exist. Served models: {', '.join(known)}.",
                err_type="NotFoundError",
                param="model",
            )
        return adapter

    # -- adapters --------------------------------------------------------------------------
    def _base_identities(self) -> list[str]:
        s = self.student
        return [self.base_model_id, s.name, str(s.model_dir), *self.base_aliases]

    def check_adapter(self, name: str, path: str) -> Any:
        """Everything that can be checked before touching the model: RequestError (400 /
        404) naming the defect, else the :class:`coop_dag.adapters.AdapterInfo`."""
        from coop_dag.adapters import AdapterError, read_lineage, validate_adapter

        what = f"cannot load LoRA adapter '{name}' from {path}"
        if not Path(path).exists():
            # vLLM's LoRAAdapterNotFoundError wording and status
            raise RequestError(
                404,
                f"Loading lora {name} failed: No adapter found for {path}",
                err_type="NotFoundError",
                param="lora_path",
            )
        try:
            info = validate_adapter(path)
            lineage = read_lineage(path, required=False)
        except AdapterError as exc:
            raise _bad(f"{what}: {exc}; nothing was loaded", "lora_path") from None
        s = self.student
        base = info.base_model or lineage.get("base_model") or None
        if base is None:
            raise _bad(
                f"{what}: its adapter_config.json does not name a base model "
                "(base_model_name_or_path) and it has no lineage.json saying which: it cannot "
                f"be checked against this server's student '{s.name}'. If it was trained on "
                f"{s.model_dir}, run: python -m coop_dag.adapters repair {path} --base "
                f"{s.model_dir}; nothing was loaded",
                "lora_path",
            )
        base = str(base)
        idents = self._base_identities()
        matches = any(base.rstrip("/") == i.rstrip("/") for i in idents)
        if not matches and os.path.isabs(base):
            # the same cached student dir seen from another mount / checkout
            bparts, mparts = Path(base.rstrip("/")).parts, Path(s.model_dir).parts
            matches = _same_path(base, s.model_dir) or (
                len(bparts) >= 3 and bparts[-3:] == mparts[-3:]
            )
        if not matches:
            raise _bad(
                f"{what}: it was built for base model {base!r}, but this server serves "
                f"student '{s.name}' ({s.model_dir}); nothing was loaded",
                "lora_path",
            )
        tok = lineage.get("tokenizer_sha256")
        if tok and tok != s.tokenizer_sha256:
            raise _bad(
                f"{what}: its lineage.json records tokenizer sha256 {str(tok)[:12]}..., this "
                f"server's student '{s.name}' has {s.tokenizer_sha256[:12]}... (another base "
                "model's tokenizer); nothing was loaded",
                "lora_path",
            )
        student_name = lineage.get("student")
        if student_name and student_name not in (s.name, self.base_model_id):
            raise _bad(
                f"{what}: its lineage.json says it was trained for student {student_name!r}, "
                f"this server serves '{s.name}'; nothing was loaded",
                "lora_path",
            )
        return info

    def load_adapter(self, name: Any, path: Any, *, load_inplace: bool = False) -> str:
        """Load a LoRA adapter under ``name`` (vLLM's semantics and messages)."""
        self._require_ready()
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise RequestError(
                400,
                "Both 'lora_name' and 'lora_path' must be provided.",
                err_type="InvalidUserInput",
            )
        if name == self.base_model_id:
            raise _bad(f"'{name}' is the base model's id; choose another lora_name", "lora_name")
        with self._state_lock:
            exists = name in self._adapters
        if exists and not load_inplace:
            raise RequestError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                err_type="InvalidUserInput",
                param="lora_name",
            )
        info = self.check_adapter(name, path)
        with self._model_lock:
            with self._state_lock:
                old = self._adapters.get(name)
                if old is not None and not load_inplace:  # raced with another load
                    raise RequestError(
                        400,
                        f"The lora adapter '{name}' has already been loaded. If you want to "
                        "load the adapter in place, set 'load_inplace' to True.",
                        err_type="InvalidUserInput",
                        param="lora_name",
                    )
                self._adapter_seq += 1
                peft_name = f"lora{self._adapter_seq}"
            self._peft_load(peft_name, path, name)
            if old is not None:  # in place: the new weights are in, the old ones go
                self._peft_delete(old.peft_name)
                if self.prefix_cache is not None:
                    self.prefix_cache.clear(old.peft_name)
            with self._state_lock:
                self._adapters[name] = _Adapter(name, path, peft_name, info.sha12, int(time.time()))
        logger.info("Loaded new LoRA adapter: name '%s', path '%s'", name, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_adapter(self, name: Any) -> str:
        self._require_ready()
        if not isinstance(name, str) or not name:
            raise RequestError(
                400,
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                err_type="InvalidUserInput",
            )
        with self._model_lock:
            with self._state_lock:
                adapter = self._adapters.pop(name, None)
            if adapter is None:
                raise RequestError(
                    404,
                    f"The lora adapter '{name}' cannot be found.",
                    err_type="NotFoundError",
                    param="lora_name",
                )
            self._peft_delete(adapter.peft_name)
            if self.prefix_cache is not None:
                self.prefix_cache.clear(adapter.peft_name)
        logger.info("Removed LoRA adapter: name '%s'", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _peft_load(self, peft_name: str, path: str, name: str) -> None:
        """Load weights (model lock held). Any failure leaves the model as it was."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations
                if self._peft is None:
                    from peft import PeftModel

                    self._peft = PeftModel.from_pretrained(
                        self.model, path, adapter_name=peft_name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(path, adapter_name=peft_name, is_trainable=False)
            self._peft.eval()
        except Exception as exc:
            self._peft_delete(peft_name, quiet=True)
            raise _bad(
                f"cannot load LoRA adapter '{name}' from {path}: it does not fit the base "
                f"model '{self.base_model_id}' ({type(exc).__name__}: {exc}); nothing was "
                "loaded",
                "lora_path",
            ) from None

    def _peft_delete(self, peft_name: str, *, quiet: bool = False) -> None:
        """Drop one PEFT adapter (model lock held); the last one unwraps the base model."""
        pm = self._peft
        if pm is None:
            return
        try:
            if peft_name in pm.peft_config:
                remaining = [n for n in pm.peft_config if n != peft_name]
                if not remaining:
                    self.model = pm.unload()  # the LoRA layers removed: the plain base again
                    self._peft = None
                    return
                if peft_name in (pm.active_adapters or []):
                    pm.set_adapter(remaining[0])
                pm.delete_adapter(peft_name)
            elif not pm.peft_config:
                self.model = pm.unload()
                self._peft = None
        except Exception:
            if not quiet:
                raise

    # -- generation ------------------------------------------------------------------------
    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None,
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Prompt ids through :func:`coop_dag.chat.render_ids` (400 on a template error)."""
        from coop_dag.chat import render_ids

        self._require_ready()
        try:
            with self._tok_lock:
                return render_ids(
                    self.tokenizer,
                    messages,
                    tools,
                    add_generation_prompt=add_generation_prompt,
                    **dict(template_kwargs or {}),
                )
        except RequestError:
            raise
        except Exception as exc:  # jinja errors: the template's own message
            raise _bad(
                f"the chat template cannot render these messages: {type(exc).__name__}: {exc}",
                "messages",
            ) from None

    def _max_new_tokens(self, prompt_len: int, requested: int | None) -> int:
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise _bad(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_len} input tokens. Please reduce the length of the "
                "input messages.",
                "messages",
            )
        if requested is None:
            return min(self.default_max_tokens, room)
        if requested > room:
            raise _bad(
                f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This "
                f"model's maximum context length is {self.max_model_len} tokens and your "
                f"request has {prompt_len} input tokens ({requested} > {self.max_model_len} - "
                f"{prompt_len}).",
                "max_tokens",
            )
        return requested

    def generate(
        self, prompt_ids: Sequence[int], adapter: _Adapter | None, params: SamplingParams
    ) -> Generation:
        """Generate one sequence for ``prompt_ids`` with ``adapter`` (``None``: the base).

        Concurrent requests that share the adapter and the sampler are generated as one
        left-padded batch (up to ``max_batch`` rows): decoding a small model on a CPU is bound
        by reading the weights, so a batch of rows costs little more than one row."""
        self._require_ready()
        prompt = [int(i) for i in prompt_ids]
        job = _Job(prompt, adapter, params, self._max_new_tokens(len(prompt), params.max_tokens))
        self._await(job)
        if job.error is not None:
            raise job.error
        gen = self._finish(prompt, job.output, job.logits, params, job.max_new)
        with self._state_lock:
            self.stats["requests"] += 1
            self.stats["generated_tokens"] += len(gen.output_ids)
            self.stats["generation_seconds"] += job.seconds
        return gen

    # -- batching: the first waiting request leads, running batches until its own is done --
    def _await(self, job: _Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()
            while not job.done.is_set() and self._leading:
                self._cond.wait()
            if job.done.is_set():
                return
            self._leading = True
        try:
            while not job.done.is_set():
                self._run_batch(self._take_batch())
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def _take_batch(self) -> list[_Job]:
        """The oldest queued job and the queued jobs it can share a batch with. While requests
        keep arriving (each within ``batch_gap`` seconds of the last) it waits for them, up to
        ``batch_window`` seconds: agents answer a finished batch a few at a time (a tool runs
        first), and a request that misses a batch waits for the whole of it."""
        started = time.monotonic()
        with self._cond:
            while True:
                head = self._queue[0]
                batch = [j for j in self._queue if j.group == head.group][: self.max_batch]
                now = time.monotonic()
                quiet_until = self._last_arrival + self.batch_gap
                left = min(started + self.batch_window, quiet_until) - now
                if len(batch) >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            for job in batch:
                self._queue.remove(job)
        return batch

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            with self._model_lock:
                if self.cancel.is_set():
                    raise RequestError(503, "the server is shutting down")
                live = [j for j in jobs if self._adapter_alive(j)]
                if live:
                    self._run_generate(live)
        except BaseException as exc:  # every row of a failed batch fails with it
            for job in jobs:
                job.error = job.error or exc
        if self.cancel.is_set():
            for job in jobs:
                job.error = job.error or RequestError(503, "the server is shutting down")
        elapsed = time.perf_counter() - started
        with self._cond:
            for job in jobs:
                job.seconds = elapsed
                job.done.set()
            self.stats["batches"] = self.stats.get("batches", 0) + 1
            self.stats["max_batch_rows"] = max(self.stats.get("max_batch_rows", 0), len(jobs))
            self._cond.notify_all()

    def _adapter_alive(self, job: _Job) -> bool:
        """False (with a 404 on the job) when its adapter was unloaded while it queued."""
        if job.adapter is None:
            return True
        with self._state_lock:
            current = self._adapters.get(job.adapter.name)
        if current is not None and current.peft_name == job.adapter.peft_name:
            return True
        job.error = RequestError(
            404,
            f"The model `{job.adapter.name}` does not exist (it was unloaded).",
            err_type="NotFoundError",
            param="model",
        )
        return False

    def _run_generate(self, jobs: list[_Job]) -> None:
        """HF ``generate`` over left-padded rows, under the model lock; fills each job's
        generated ids (up to and including the id that ended it) and raw logits."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        head = jobs[0]
        params, adapter = head.params, head.adapter
        max_new = max(j.max_new for j in jobs)
        min_new = max_new if params.ignore_eos else min(params.min_tokens, head.max_new)
        cfg = GenerationConfig(
            max_new_tokens=max_new,
            min_new_tokens=min_new or None,
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_p=params.top_p if not params.greedy else None,
            top_k=params.top_k if not params.greedy else None,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.pad_id,
            bos_token_id=getattr(self.model.generation_config, "bos_token_id", None),
            return_dict_in_generate=True,
            output_logits=params.logprobs,
        )
        width = max(len(j.prompt) for j in jobs)
        ids = torch.tensor([[self.pad_id] * (width - len(j.prompt)) + j.prompt for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt)) + [1] * len(j.prompt) for j in jobs])
        rows = _RowStops(self, jobs, width, min_new)
        criteria = StoppingCriteriaList([_CancelCriteria(self.cancel), rows])
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if adapter is None and self._peft is not None:
            ctx: Any = self._peft.disable_adapter()
            model = self._peft
        elif adapter is not None:
            self._peft.set_adapter(adapter.peft_name)
            ctx, model = contextlib.nullcontext(), self._peft
        else:
            ctx, model = contextlib.nullcontext(), self.model
        scope = adapter.peft_name if adapter else None
        with ctx, torch.inference_mode():
            # Each row's prompt but its last id goes into the cache unpadded (reusing the
            # longest cached prefix: an agent's next turn extends its last one); generate
            # then runs only the last id of every row, so padding costs no prefill.
            cache = self._prefill(model, scope, jobs, width)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=cache,
                generation_config=cfg,
                stopping_criteria=criteria,
            )
        for i, job in enumerate(jobs):
            generated = out.sequences[i, width:].tolist()
            end = rows.ended[i] if rows.ended[i] is not None else len(generated)
            job.output = [int(t) for t in generated[:end]]
            if params.logprobs and out.logits is not None:
                job.logits = [step[i : i + 1] for step in out.logits[:end]]
        if self.prefix_cache is not None and out.past_key_values is not None:
            for i, job in enumerate(jobs):
                # the cache holds the prompt and every generated id but the last
                seen = job.prompt + job.output[:-1]
                start = width - len(job.prompt)
                self.prefix_cache.store(
                    scope, seen, layer_slices(out.past_key_values, i, start, start + len(seen))
                )

    def _prefill(self, model: Any, scope: str | None, jobs: list[_Job], width: int) -> Any:
        """A batch cache of every row's prompt without its last id, left-padded to
        ``width - 1`` (None when that is empty)."""
        import torch

        if width <= 1:
            return None
        per_row = []
        for job in jobs:
            target = job.prompt[:-1]
            hit, layers = (0, None)
            if self.prefix_cache is not None:
                hit, layers = self.prefix_cache.lookup(scope, target)
            cache = new_cache(model.config, layers)
            if hit < len(target):
                model(
                    input_ids=torch.tensor([target[hit:]]),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            self.stats["prefill_tokens"] = self.stats.get("prefill_tokens", 0) + len(target) - hit
            self.stats["cached_tokens"] = self.stats.get("cached_tokens", 0) + hit
            per_row.append(layer_slices(cache, 0, 0, len(target)) if target else None)
        return new_cache(model.config, left_pad_stack(per_row, width - 1))

    def _finish(
        self,
        prompt: list[int],
        output: list[int],
        logits: list[Any] | None,
        params: SamplingParams,
        max_new: int,
    ) -> Generation:
        finish, stop_reason = "length", None
        body = output
        if output and output[-1] in self.stop_ids and not params.ignore_eos:
            finish, stop_reason, body = "stop", output[-1], output[:-1]
        with self._tok_lock:
            text = self.tokenizer.decode(body, skip_special_tokens=params.skip_special_tokens)
        if params.stop:
            hits = [(text.find(s), s) for s in params.stop if s in text]
            if hits:
                pos, s = min(hits)
                text, finish, stop_reason = text[:pos], "stop", s
        if finish == "length" and len(output) < max_new and stop_reason is None:
            finish = "stop"  # ended early for another reason (e.g. a stop string at a boundary)
        lp = self._logprobs(output, logits, params.top_logprobs) if logits is not None else None
        return Generation(prompt, output, text, finish, stop_reason, lp)

    def _logprobs(self, output: list[int], logits: list[Any], top: int) -> list[dict]:
        import torch

        entries = []
        with self._tok_lock:
            for token_id, step in zip(output, logits, strict=False):
                row = torch.log_softmax(step[0].float(), dim=-1)
                tok = self.tokenizer.decode([token_id])
                entry: dict[str, Any] = {
                    "token": tok,
                    "logprob": max(float(row[token_id]), -9999.0),
                    "bytes": list(tok.encode("utf-8")),
                    "top_logprobs": [],
                }
                if top:
                    values, ids = torch.topk(row, top)
                    for v, i in zip(values.tolist(), ids.tolist(), strict=True):
                        t = self.tokenizer.decode([i])
                        entry["top_logprobs"].append(
                            {"token": t, "logprob": max(v, -9999.0), "bytes": list(t.encode())}
                        )
                entries.append(entry)
        return entries

    # -- requests --------------------------------------------------------------------------
    def chat(self, body: Any) -> dict:
        """A ``/v1/chat/completions`` response body for a request body (RequestError else)."""
        self._require_ready()
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        if body.get("chat_template") is not None:
            raise _bad(
                "a request-supplied 'chat_template' is not accepted: the server renders with "
                "the student's template (the one TITO trains on)",
                "chat_template",
            )
        adapter = self.resolve_model(body.get("model"))
        messages = validate_messages(body.get("messages"))
        tools = validate_tools(body.get("tools"))
        tool_choice = _tool_choice(body)
        params = parse_sampling(body)
        n = _opt_int(body, "n", low=1, high=MAX_N) or 1
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise _bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        add_gen = _opt_bool(body, "add_generation_prompt", True)
        return_ids = _opt_bool(body, "return_token_ids")
        prompt = self.render(messages, tools, add_generation_prompt=add_gen, template_kwargs=kwargs)
        parse_tools = bool(tools) and tool_choice == "auto" and self.tool_call_parser
        choices, completion_tokens = [], 0
        for index in range(n):
            gen = self.generate(prompt, adapter, params)
            completion_tokens += len(gen.output_ids)
            message = build_assistant_message(
                gen.text,
                parse_tools=parse_tools,
                reasoning_parser=self.reasoning_parser,
                think_shape=self.student.think_shape,
            )
            finish = gen.finish_reason
            if message["tool_calls"] and finish == "stop":
                finish = "tool_calls"
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "logprobs": {"content": gen.logprobs} if gen.logprobs is not None else None,
                "finish_reason": finish,
                "stop_reason": gen.stop_reason,
            }
            if return_ids:
                choice["token_ids"] = list(gen.output_ids)
            choices.append(choice)
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": adapter.name if adapter else self.base_model_id,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt) + completion_tokens,
            },
        }
        if return_ids:
            out["prompt_token_ids"] = list(prompt)
        return out

    def completion(self, body: Any) -> dict:
        """A ``/v1/completions`` response body: no chat template, the prompt as given."""
        self._require_ready()
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        adapter = self.resolve_model(body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            with self._tok_lock:
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
        ):
            ids = prompt
        else:
            raise _bad("'prompt' must be a non-empty string or a list of token ids", "prompt")
        params = parse_sampling(body)
        if params.logprobs:
            raise _bad("logprobs are only supported on /v1/chat/completions", "logprobs")
        gen = self.generate(ids, adapter, params)
        choice: dict[str, Any] = {
            "index": 0,
            "text": gen.text,
            "logprobs": None,
            "finish_reason": gen.finish_reason,
            "stop_reason": gen.stop_reason,
        }
        return_ids = _opt_bool(body, "return_token_ids")
        if return_ids:
            choice["token_ids"] = list(gen.output_ids)
        out: dict[str, Any] = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": adapter.name if adapter else self.base_model_id,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(gen.output_ids),
                "total_tokens": len(ids) + len(gen.output_ids),
            },
        }
        if return_ids:
            out["prompt_token_ids"] = list(ids)
        return out


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------

MAX_BODY_BYTES = 64 * 1024 * 1024


def _stream_chunks(response: dict, include_usage: bool) -> list[dict]:
    """A finished chat completion as OpenAI stream chunks (one content delta per choice:
    the embedded server generates first and streams after)."""
    base = {k: response[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    chunks = []
    for choice in response["choices"]:
        msg = choice["message"]
        delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
        if msg.get("reasoning_content") is not None:
            delta["reasoning_content"] = msg["reasoning_content"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        first: dict[str, Any] = {"index": choice["index"], "delta": delta, "finish_reason": None}
        if "token_ids" in choice:
            first["token_ids"] = choice["token_ids"]
        chunks.append({**base, "choices": [first]})
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": choice["index"],
                        "delta": {},
                        "finish_reason": choice["finish_reason"],
                    }
                ],
            }
        )
    if "prompt_token_ids" in response and chunks:
        chunks[0]["prompt_token_ids"] = response["prompt_token_ids"]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


class _Handler(BaseHTTPRequestHandler):
    server_version = "coop-dag-embedded/1"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing outlives stop()

    @property
    def engine(self) -> ChatEngine:
        return self.server.engine  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str) and content_type.startswith("text/"):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _error(self, err: RequestError) -> None:
        self._send(err.status, err.body())

    def _json_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _bad(f"request body too large ({length} bytes)")
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad(f"the request body is not valid JSON: {exc}") from None

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path in ("/health", "/ping"):
                if self.engine.ready.is_set():
                    self._send(200, b"", "application/json")
                else:
                    self._send(503, {"status": "loading"})
            elif path == "/v1/models":
                self.engine._require_ready()
                self._send(200, {"object": "list", "data": self.engine.model_cards()})
            elif path == "/version":
                self._send(200, {"version": "coop-dag-embedded/1"})
            elif path == "/v1/info":
                self._send(200, self.engine.describe() if self.engine.ready.is_set() else {})
            else:
                self._send(404, {"detail": "Not Found"})
        except RequestError as err:
            self._error(err)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
        }
        if path not in routes:
            self._send(404, {"detail": "Not Found"})
            return
        try:
            body = self._json_body()
            if path == "/v1/chat/completions":
                response = self.engine.chat(body)
                if isinstance(body, dict) and body.get("stream"):
                    opts = body.get("stream_options") or {}
                    self._stream(
                        response, bool(isinstance(opts, dict) and opts.get("include_usage"))
                    )
                else:
                    self._send(200, response)
            elif path == "/v1/completions":
                self._send(200, self.engine.completion(body))
            elif path == "/v1/load_lora_adapter":
                body = body if isinstance(body, dict) else {}
                msg = self.engine.load_adapter(
                    body.get("lora_name"),
                    body.get("lora_path"),
                    load_inplace=bool(body.get("load_inplace")),
                )
                self._send(200, msg, "text/plain; charset=utf-8")
            else:
                body = body if isinstance(body, dict) else {}
                msg = self.engine.unload_adapter(body.get("lora_name"))
                self._send(200, msg, "text/plain; charset=utf-8")
        except RequestError as err:
            self._error(err)
        except Exception as exc:  # a bug or a model failure: 500 naming it, server stays up
            logger.exception("request to %s failed", path)
            self._error(RequestError(500, f"{type(exc).__name__}: {exc}"))

    def _stream(self, response: dict, include_usage: bool) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in _stream_chunks(response, include_usage):
                self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], engine: ChatEngine):
        self.engine = engine
        super().__init__(address, _Handler)


def _bind(host: str, port: int, engine: ChatEngine, fallback: bool) -> _HTTPServer:
    try:
        return _HTTPServer((host, port), engine)
    except OSError as exc:
        if exc.errno not in (98, 48, 10048) or port == 0:  # EADDRINUSE (linux, mac, win)
            raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
        if fallback:
            server = _HTTPServer((host, 0), engine)
            logger.warning(
                "port %d on %s is in use; serving on port %d instead",
                port,
                host,
                server.server_address[1],
            )
            return server
        raise ServeError(
            f"port {port} on {host} is in use by another process; stop it, choose another "
            "--port, or pass --port 0 (any free port) / --port-fallback"
        ) from None


class EmbeddedServer:
    """The embedded server in this process: ``start()`` binds the port (ServeError naming it
    when taken, unless ``port_fallback``), serves HTTP from a daemon thread and loads the
    model (``/health`` answers 503 until it is loaded; ``start`` returns once it is), then
    loads the startup ``adapters`` ({name: path}). ``stop()`` cancels in-flight generation,
    closes the socket and joins the thread. ``port=0`` picks a free port; ``url`` is the
    base URL (``api_base`` = ``url + "/v1"``)."""

    def __init__(
        self,
        student: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        adapters: Mapping[str, str] | None = None,
        port_fallback: bool = False,
        engine: ChatEngine | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if engine is not None and engine_kwargs:
            raise ServeError("pass either engine= or engine keyword arguments, not both")
        self.engine = engine or ChatEngine(student, **engine_kwargs)
        self.host = host
        self.port = int(port)
        self.port_fallback = port_fallback
        self.startup_adapters = dict(adapters or {})
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def bind(self) -> EmbeddedServer:
        """Bind the port and start answering (503 until :meth:`load`)."""
        if self._httpd is not None:
            return self
        self.engine.cancel.clear()  # a stopped server can be started again
        self._httpd = _bind(self.host, self.port, self.engine, self.port_fallback)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"coop-dag-serve:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def load(self) -> EmbeddedServer:
        """Load the model and the startup adapters (ServeError naming a bad adapter)."""
        self.engine.load()
        for name, path in self.startup_adapters.items():
            try:
                self.engine.load_adapter(name, str(path))
            except RequestError as err:
                raise ServeError(f"startup adapter {name}={path}: {err.message}") from None
        return self

    def start(self) -> EmbeddedServer:
        self.bind()
        try:
            self.load()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.engine.cancel.set()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        # wait (briefly) for an in-flight generation to notice the cancel flag
        if self.engine._model_lock.acquire(timeout=timeout):
            self.engine._model_lock.release()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedServer({self.engine.base_model_id!r}, url={self.url!r})"


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _adapter_arg(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or a bare ``PATH`` (served as its content name ``student-<sha12>``)."""
    if "=" in text and not os.path.exists(text):
        name, _, path = text.partition("=")
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH or PATH, got {text!r}")
        return name, path
    from coop_dag.adapters import AdapterError, adapter_name

    try:
        return adapter_name(text), text
    except AdapterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "coop-dag serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serve a student (and LoRA adapters) over an OpenAI-compatible HTTP API on "
            "loopback: the embedded stand-in for `vllm serve --enable-lora`. Prompts are "
            "rendered with the student's chat template exactly as the TITO stage renders "
            "them; `return_token_ids` returns vLLM's prompt_token_ids / token_ids; "
            "adapters load and unload at runtime through /v1/load_lora_adapter and "
            "/v1/unload_lora_adapter."
        ),
        epilog=(
            "Routes: GET /health, GET /v1/models, POST /v1/chat/completions, "
            "POST /v1/completions, POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter. "
            "Point a client at the printed URL + /v1, e.g. "
            "LiteLLMChatModel('openai/<model id>', api_base=URL/v1, capture_token_ids=True)."
        ),
    )
    parser.add_argument(
        "--student",
        default=None,
        help="student name from configs/students.yaml, or hf:<dir> (default: the registry's "
        "default, smollm2-135m)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port (0: any free port; default 8000)"
    )
    parser.add_argument(
        "--port-fallback",
        action="store_true",
        help="if --port is taken, serve on a free port instead of failing",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=_adapter_arg,
        metavar="NAME=PATH",
        help="load a LoRA adapter at startup (repeatable); a bare PATH is served under its "
        "content name student-<sha12>",
    )
    parser.add_argument(
        "--served-model-name", help="the base model's id in /v1/models (default: the student)"
    )
    parser.add_argument(
        "--reasoning-parser",
        choices=REASONING_PARSERS,
        default=None,
        help="move a leading <think>...</think> into reasoning_content (default: none -- in "
        "the seed a reasoning parser swallowed every tool call of a student that never "
        "closes a think span)",
    )
    parser.add_argument(
        "--no-tool-parser",
        action="store_true",
        help="return tool-call markup as plain content instead of parsing it into tool_calls",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="context length (default: the model's max_position_embeddings)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"max_tokens when a request gives none (default {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--accept-base",
        action="append",
        default=[],
        metavar="NAME",
        help="another name adapters may give as base_model_name_or_path for this student "
        "(repeatable; its name and model dir always match)",
    )
    parser.add_argument(
        "--ready-file",
        help="write {url, pid, port, base_model_id} as JSON here once ready (for supervisors)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="concurrent requests (same model and sampler) generated as one batch "
        f"(default {DEFAULT_MAX_BATCH}; 1: one at a time)",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=DEFAULT_BATCH_WINDOW,
        help="at most this many seconds a batch waits for more requests "
        f"(default {DEFAULT_BATCH_WINDOW})",
    )
    parser.add_argument(
        "--batch-gap",
        type=float,
        default=DEFAULT_BATCH_GAP,
        help="a batch starts once no request arrived for this many seconds "
        f"(default {DEFAULT_BATCH_GAP})",
    )
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=DEFAULT_PREFIX_CACHE_TOKENS,
        help="keys/values of recent sequences kept so a prompt only runs past its longest "
        f"cached prefix (default {DEFAULT_PREFIX_CACHE_TOKENS} positions; 0: off)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``coop-dag serve`` / ``python -m coop_dag.serve``: serve until SIGTERM / SIGINT."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    names = [n for n, _ in args.adapter]
    if len(set(names)) != len(names):
        print("coop-dag serve: error: the same adapter name is given twice", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    server = EmbeddedServer(
        args.student,
        args.host,
        args.port,
        adapters=dict(args.adapter),
        port_fallback=args.port_fallback,
        served_model_name=args.served_model_name,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=not args.no_tool_parser,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        base_aliases=args.accept_base,
        max_batch=args.max_batch,
        batch_window=args.batch_window,
        batch_gap=args.batch_gap,
        prefix_cache_tokens=args.prefix_cache_tokens,
    )
    try:
        server.bind()
        print(f"coop-dag serve: listening on {server.url} (loading the model...)", flush=True)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        server.load()
    except (ServeError, ValueError, OSError) as exc:
        server.stop()
        print(f"coop-dag serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    engine = server.engine
    print(
        f"coop-dag serve: student '{engine.student.name}' ready at {server.api_base} "
        f"(base model id '{engine.base_model_id}', model dir {engine.student.model_dir})",
        flush=True,
    )
    for a in engine.adapters():
        print(f"coop-dag serve: adapter '{a.name}' from {a.path}", flush=True)
    if args.ready_file:
        ready = {
            "url": server.url,
            "api_base": server.api_base,
            "port": server.port,
            "pid": os.getpid(),
            "base_model_id": engine.base_model_id,
            "student": engine.student.name,
        }
        tmp = f"{args.ready_file}.tmp"
        Path(tmp).write_text(json.dumps(ready))
        os.replace(tmp, args.ready_file)
    try:
        while not stop.wait(0.5):
            if not server.running:
                print("coop-dag serve: the HTTP thread died", file=sys.stderr)
                return 1
    finally:
        server.stop()
        print("coop-dag serve: stopped", flush=True)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and supervisors)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(serve_main())
