"""The swap proof's request: a fixed prompt decoded greedily (:class:`Probe`), one model's answer
to it (:class:`ProbeOutput`, with token ids and log-probabilities), asking it
(:func:`run_probe`), and telling two answers apart (:func:`outputs_differ`,
:func:`logprobs_differ`). `serving.swap` proves a swap with these; `serving.probe` builds its
first-turn cases as probes and asks them with :func:`run_probe`.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from coop_dag.serving.errors import ServingError
from coop_dag.serving.vllm import VllmEngine, as_engine

__all__ = [
    "DEFAULT_PROBE_MAX_TOKENS",
    "LOGPROB_TOLERANCE",
    "Probe",
    "ProbeOutput",
    "logprobs_differ",
    "outputs_differ",
    "run_probe",
]

DEFAULT_PROBE_MAX_TOKENS = 48
LOGPROB_TOLERANCE = 1e-4  # two different weight sets never agree this closely on every token


@dataclass(frozen=True)
class Probe:
    """A fixed prompt decoded greedily (temperature 0, seed 0) with token ids and logprobs."""

    name: str
    messages: tuple[dict, ...]
    tools: tuple[dict, ...] = ()
    max_tokens: int = DEFAULT_PROBE_MAX_TOKENS

    def body(self, model: str) -> dict:
        body: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in self.messages],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "seed": 0,
            "return_token_ids": True,
            "logprobs": True,
        }
        if self.tools:
            body["tools"] = [dict(t) for t in self.tools]
            body["tool_choice"] = "auto"
        return body

    @property
    def sha12(self) -> str:
        blob = json.dumps(
            {"messages": self.messages, "tools": self.tools, "max_tokens": self.max_tokens},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> dict:
        return {"probe": self.name, "probe_sha12": self.sha12, "probe_max_tokens": self.max_tokens}


@dataclass
class ProbeOutput:
    """One model's answer to a probe."""

    model: str
    content: str | None
    tool_calls: list[dict]
    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: str | None

    @property
    def text(self) -> str:
        """Content plus the tool calls, for display."""
        parts = [self.content or ""]
        for tc in self.tool_calls:
            fn = tc.get("function") or {}
            parts.append(f"[tool_call {fn.get('name')}({fn.get('arguments')})]")
        return "\n".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "text": self.text,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "n_tokens": None if self.token_ids is None else len(self.token_ids),
        }


def _post_json(url: str, body: dict, *, timeout: float, api_key: str | None = None) -> dict:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        try:
            err = json.loads(raw).get("error") or {}
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            message = raw
        raise ServingError(f"POST {url} -> {exc.code}: {message or raw}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServingError(f"POST {url}: cannot reach the server ({exc})") from None
    except ValueError as exc:
        raise ServingError(f"POST {url}: the answer is not JSON ({exc})") from None


def run_probe(
    engine: VllmEngine | str, model: str, probe: Probe, *, timeout: float = 600.0
) -> ProbeOutput:
    """Ask ``model`` (the base id or an adapter name) the probe, greedily."""
    eng = as_engine(engine)
    data = _post_json(
        eng.api_base + "/chat/completions", probe.body(model), timeout=timeout, api_key=eng.api_key
    )
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError):
        raise ServingError(f"probe of {model!r}: malformed answer {str(data)[:300]}") from None
    ids = choice.get("token_ids")
    lp = (choice.get("logprobs") or {}).get("content") if choice.get("logprobs") else None
    return ProbeOutput(
        model=model,
        content=message.get("content"),
        tool_calls=list(message.get("tool_calls") or []),
        token_ids=[int(i) for i in ids] if isinstance(ids, list) else None,
        logprobs=[float(e.get("logprob", 0.0)) for e in lp] if isinstance(lp, list) else None,
        finish_reason=choice.get("finish_reason"),
    )


def _signature(out: ProbeOutput) -> Any:
    if out.token_ids is not None:
        return tuple(out.token_ids)
    calls = [
        ((tc.get("function") or {}).get("name"), (tc.get("function") or {}).get("arguments"))
        for tc in out.tool_calls
    ]
    return (out.content, json.dumps(calls))


def outputs_differ(a: ProbeOutput, b: ProbeOutput) -> bool:
    """Different generated token ids (or text + tool calls when ids are unavailable)."""
    if (a.token_ids is None) != (b.token_ids is None):
        return (a.content, a.tool_calls) != (b.content, b.tool_calls)
    return _signature(a) != _signature(b)


def logprobs_differ(a: ProbeOutput, b: ProbeOutput, tol: float = LOGPROB_TOLERANCE) -> bool | None:
    """Whether two answers with the same tokens came from different weights (their
    log-probabilities differ somewhere by more than ``tol``); ``None`` when unknown."""
    if a.logprobs is None or b.logprobs is None or len(a.logprobs) != len(b.logprobs):
        return None
    return any(abs(x - y) > tol for x, y in zip(a.logprobs, b.logprobs, strict=True))
