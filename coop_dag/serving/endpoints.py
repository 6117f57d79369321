"""A reachable OpenAI-compatible server and its base model: :class:`Endpoint` (what
`serving.server.ensure_server` and `serving.settings.ServeSettings` hand out), which base model
an endpoint serves (:func:`base_model_id`) and whether it is the expected one
(:func:`check_base_model`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coop_dag.serving.errors import ServingError
from coop_dag.serving.vllm import VllmEngine, as_engine

__all__ = [
    "SERVED_REQUEST_TIMEOUT_S",
    "Endpoint",
    "base_model_id",
    "check_base_model",
    "same_path",
]

# how long a request to a served model may take (see Endpoint.chat_model)
SERVED_REQUEST_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Endpoint:
    """A reachable OpenAI-compatible server with a base model (and LoRA management)."""

    url: str
    base_model_id: str
    kind: str = "vllm"
    started: bool = False  # this call started it
    pid: int | None = None
    log_path: str | None = None
    identity: str | None = None

    @property
    def api_base(self) -> str:
        return self.url.rstrip("/") + "/v1"

    @property
    def engine(self) -> VllmEngine:
        return VllmEngine(self.url)

    def chat_model(self, model: str, **kwargs: Any):
        """A :class:`coop_dag.agent.models.LiteLLMChatModel` for ``model`` (an adapter name or
        the base id) on this endpoint, token ids captured by default."""
        from coop_dag.agent.models import LiteLLMChatModel

        kwargs.setdefault("capture_token_ids", True)
        # a request queues behind the whole batch on a CPU server (dozens of agents' prompts
        # prefilled first): a long wait is load, not a fault -- a dead server is refused at
        # once -- and a timed-out request is aborted and resent, redoing its prefill
        kwargs.setdefault("timeout", SERVED_REQUEST_TIMEOUT_S)
        return LiteLLMChatModel(f"openai/{model}", api_base=self.api_base, **kwargs)

    def describe(self) -> dict:
        return {
            "url": self.url,
            "api_base": self.api_base,
            "base_model_id": self.base_model_id,
            "server_kind": self.kind,
            "server_started_now": self.started,
            "server_pid": self.pid,
            "server_log": self.log_path,
            "server_identity": self.identity,
        }


def base_model_id(engine: VllmEngine | str) -> str:
    """The id of the (first) base model an endpoint lists."""
    cards = as_engine(engine).list_models()
    for card in cards:
        if not card.get("parent"):
            return str(card["id"])
    raise ServingError(f"{as_engine(engine).url}/v1/models lists no base model: {cards}")


def same_path(a: str | None, b: str) -> bool:
    """``a`` is the path ``b`` (a trailing slash aside)."""
    return a is not None and os.fspath(a).rstrip("/") == b.rstrip("/")


def check_base_model(
    engine: VllmEngine, expect_ids: Sequence[str], expect_root: str | None = None
) -> str:
    """The id of the endpoint's base model that is the expected one (by id or by root
    path); ServingError naming what it serves instead."""
    cards = engine.list_models()
    bases = [c for c in cards if not c.get("parent")]
    if not bases:
        raise ServingError(f"{engine.url}/v1/models lists no base model")
    for card in bases:
        if str(card.get("id")) in expect_ids or (
            expect_root and same_path(card.get("root"), expect_root)
        ):
            return str(card["id"])
    shown = ", ".join(f"{c.get('id')} ({c.get('root')})" for c in bases)
    raise ServingError(
        f"{engine.url} serves {shown}, not {' / '.join(expect_ids)}"
        + (f" ({expect_root})" if expect_root else "")
    )
