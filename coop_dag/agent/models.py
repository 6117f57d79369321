"""Chat models the agent loop queries: the ``ChatModel`` protocol, the ``ModelResponse`` it
returns, and ``LiteLLMChatModel`` for any litellm-reachable endpoint (API teachers, vLLM).

Token capture (TITO's native path). With ``capture_token_ids=True`` the request carries
``extra_body={"return_token_ids": true}``; vLLM then answers with a top-level
``prompt_token_ids`` list and a per-choice ``token_ids`` list. litellm 1.106 keeps unknown
top-level response keys as attributes of its ``ModelResponse`` (``response.prompt_token_ids``,
also listed in ``response.model_extra``) and unknown per-choice keys in
``choices[i].provider_specific_fields`` (``["token_ids"]``). Both are read back into
``ModelResponse.token_capture = {"prompt_token_ids": [...], "output_token_ids": [...]}``;
when the endpoint did not return them, ``token_capture`` is ``None`` (the TITO stage then
re-tokenises).

Credentials. ``api_key_env`` names an environment variable read at call time; the key is
never stored on the object, never logged, and scrubbed from error messages.

litellm is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

# Providers that speak the OpenAI wire format to a caller-given api_base; a local vLLM needs
# no key, so one is made up rather than letting litellm pick up e.g. OPENAI_API_KEY and send
# a real cloud key to a local server.
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "hosted_vllm", "custom_openai"})
PLACEHOLDER_API_KEY = "EMPTY"

# Message keys sent to the API; trajectory messages also carry ``extra`` (timestamps,
# token capture) which is ours, not the provider's.
_API_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class ModelError(RuntimeError):
    """A model query failed. The message names the model and the endpoint."""

    def __init__(
        self,
        message: str,
        *,
        model: str,
        endpoint: str,
        attempts: int = 0,
        transient: bool = False,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.endpoint = endpoint
        self.attempts = attempts
        self.transient = transient
        self.status_code = status_code


class ModelCredentialsError(ModelError):
    """The API key environment variable a model needs is not set."""


@dataclass
class ModelResponse:
    """One assistant turn as returned by a model.

    ``tool_calls`` are OpenAI-shape dicts (``{"id", "type": "function", "function":
    {"name", "arguments": <json str>}}``); ``token_capture`` is
    ``{"prompt_token_ids": [...], "output_token_ids": [...]}`` when the engine returned ids.
    """

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    token_capture: dict | None = None
    usage: dict = field(default_factory=dict)
    cost: float = 0.0
    raw_model: str = ""
    finish_reason: str | None = None

    def to_message(self, *, timestamp: float | None = None) -> dict:
        """The assistant message in the rollout-log shape (see DESIGN.md, data contracts)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [dict(tc) for tc in self.tool_calls]
        extra: dict[str, Any] = {
            "timestamp": float(time.time() if timestamp is None else timestamp),
            "model": self.raw_model,
            "cost": float(self.cost),
            "usage": dict(self.usage),
        }
        if self.finish_reason is not None:
            extra["finish_reason"] = self.finish_reason
        if self.token_capture is not None:
            extra["token_capture"] = {
                "prompt_token_ids": list(self.token_capture["prompt_token_ids"]),
                "output_token_ids": list(self.token_capture["output_token_ids"]),
            }
        message["extra"] = extra
        return message


@runtime_checkable
class ChatModel(Protocol):
    name: str

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse: ...


def prepare_messages(messages: list[dict]) -> list[dict]:
    """Messages as sent to an API: only the OpenAI keys (drops ``extra``)."""
    return [{k: m[k] for k in _API_MESSAGE_KEYS if k in m} for m in messages]


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


def _is_transient(exc: BaseException) -> bool:
    import litellm
    import openai

    transient_types = (
        litellm.exceptions.Timeout,
        litellm.exceptions.APIConnectionError,
        litellm.exceptions.RateLimitError,
        litellm.exceptions.ServiceUnavailableError,
        litellm.exceptions.InternalServerError,
        litellm.exceptions.BadGatewayError,
        openai.APITimeoutError,
        openai.APIConnectionError,
        openai.RateLimitError,
        openai.InternalServerError,
    )
    non_transient_types = (
        litellm.exceptions.ContextWindowExceededError,
        litellm.exceptions.AuthenticationError,
        litellm.exceptions.PermissionDeniedError,
        litellm.exceptions.NotFoundError,
        litellm.exceptions.UnsupportedParamsError,
    )
    if isinstance(exc, non_transient_types):
        return False
    if isinstance(exc, transient_types):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in _TRANSIENT_STATUS
    return isinstance(exc, TimeoutError | ConnectionError)


def _is_api_error(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError | TimeoutError | ConnectionError)


def _int_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value]
    except (TypeError, ValueError):
        return None


def extract_token_capture(response: Any) -> dict | None:
    """vLLM's ``prompt_token_ids`` / ``choices[0].token_ids`` from a litellm response."""
    prompt = getattr(response, "prompt_token_ids", None)
    if prompt is None:
        prompt = (getattr(response, "model_extra", None) or {}).get("prompt_token_ids")
    choices = getattr(response, "choices", None) or []
    output = None
    if choices:
        choice = choices[0]
        output = (getattr(choice, "provider_specific_fields", None) or {}).get("token_ids")
        if output is None:
            output = getattr(choice, "token_ids", None)
    prompt_ids, output_ids = _int_list(prompt), _int_list(output)
    if prompt_ids is None or output_ids is None:
        return None
    return {"prompt_token_ids": prompt_ids, "output_token_ids": output_ids}


def _tool_call_dict(tc: Any) -> dict:
    if isinstance(tc, dict):
        fn = tc.get("function") or {}
        return {
            "id": tc.get("id"),
            "type": tc.get("type") or "function",
            "function": {"name": fn.get("name"), "arguments": fn.get("arguments")},
        }
    fn = getattr(tc, "function", None)
    return {
        "id": getattr(tc, "id", None),
        "type": getattr(tc, "type", None) or "function",
        "function": {
            "name": getattr(fn, "name", None),
            "arguments": getattr(fn, "arguments", None),
        },
    }


class LiteLLMChatModel:
    """A chat model behind ``litellm.completion``.

    ``retries`` is the number of retries after the first attempt (so ``retries + 1``
    attempts); transient failures (connection errors, timeouts, 429, 5xx) are retried with
    exponential backoff ``backoff * 2**k`` seconds capped at ``max_backoff``; other API
    errors (400, 401, 404, context window) fail at once. Either way a :class:`ModelError`
    naming the model and endpoint is raised.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        capture_token_ids: bool = False,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        extra_body: dict | None = None,
        completion_kwargs: dict | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.capture_token_ids = capture_token_ids
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.extra_body = dict(extra_body or {})
        self.completion_kwargs = dict(completion_kwargs or {})

    # identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model

    @property
    def endpoint(self) -> str:
        return self.api_base or f"{_provider(self.model) or 'litellm'} default endpoint"

    def describe(self) -> dict:
        """JSON-able metadata for lineage (names the key variable, never its value)."""
        return {
            "model": self.model,
            "provider": _provider(self.model),
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "capture_token_ids": self.capture_token_ids,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "extra_body": dict(self.extra_body),
            "completion_kwargs": dict(self.completion_kwargs),
        }

    def __repr__(self) -> str:
        return (
            f"LiteLLMChatModel(model={self.model!r}, api_base={self.api_base!r}, "
            f"api_key_env={self.api_key_env!r}, capture_token_ids={self.capture_token_ids!r}, "
            f"temperature={self.temperature!r}, max_tokens={self.max_tokens!r}, "
            f"timeout={self.timeout!r}, retries={self.retries!r}, backoff={self.backoff!r})"
        )

    # credentials -------------------------------------------------------------------------
    def check_credentials(self) -> None:
        """Raise :class:`ModelCredentialsError` naming the variable a call would lack."""
        if self.api_key_env is not None:
            if not os.environ.get(self.api_key_env):
                raise ModelCredentialsError(
                    f"model {self.model!r} at {self.endpoint}: environment variable "
                    f"{self.api_key_env} is not set (it must hold the API key)",
                    model=self.model,
                    endpoint=self.endpoint,
                )
            return
        if self.api_base is not None and _provider(self.model) in OPENAI_COMPATIBLE_PROVIDERS:
            return  # a self-hosted OpenAI-compatible endpoint; no key needed
        import litellm

        try:
            env = litellm.validate_environment(model=self.model)
        except Exception as e:  # unknown provider: let the call itself tell
            logger.debug("validate_environment(%s) failed: %s", self.model, e)
            return
        if not env.get("keys_in_environment", True):
            missing = env.get("missing_keys") or []
            raise ModelCredentialsError(
                f"model {self.model!r} at {self.endpoint}: no API key in the environment; "
                f"set {' or '.join(missing) or 'the provider key'} (or pass api_key_env)",
                model=self.model,
                endpoint=self.endpoint,
            )

    def _api_key(self) -> str | None:
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                self.check_credentials()  # raises with the variable's name
            return key
        if self.api_base is not None and _provider(self.model) in OPENAI_COMPATIBLE_PROVIDERS:
            return PLACEHOLDER_API_KEY
        return None  # litellm reads the provider's own variable

    # querying ----------------------------------------------------------------------------
    def _completion_kwargs(
        self, messages: list[dict], tools: list[dict], api_key: str | None
    ) -> dict:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": prepare_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "drop_params": True,
            # Our own retry loop counts attempts; litellm's and the OpenAI SDK's are off.
            "num_retries": 0,
            "max_retries": 0,
        }
        if tools:
            kwargs["tools"] = tools
            kwargs["tool_choice"] = "auto"
            # litellm 1.106 imports its MCP gateway (needs the optional `mcp` package) for any
            # request with tools; ours are plain function tools, so skip that path.
            kwargs["_skip_mcp_handler"] = True
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if api_key is not None:
            kwargs["api_key"] = api_key
        extra_body = dict(self.extra_body)
        if self.capture_token_ids:
            extra_body["return_token_ids"] = True
        if extra_body:
            kwargs["extra_body"] = extra_body
        kwargs.update(self.completion_kwargs)
        return kwargs

    def _scrub(self, text: str, api_key: str | None) -> str:
        if api_key and api_key != PLACEHOLDER_API_KEY:
            text = text.replace(api_key, "***")
        return text

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse:
        import litellm

        litellm.suppress_debug_info = True  # no "Give Feedback" banner on every error
        api_key = self._api_key()
        kwargs = self._completion_kwargs(messages, tools, api_key)
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = litellm.completion(**kwargs)
                break
            except Exception as exc:
                if not _is_api_error(exc):
                    raise
                transient = _is_transient(exc)
                detail = self._scrub(f"{type(exc).__name__}: {exc}", api_key)
                status = getattr(exc, "status_code", None)
                if not transient or attempt == attempts:
                    what = "failed" if not transient else f"failed after {attempt} attempts"
                    raise ModelError(
                        f"model {self.model!r} at {self.endpoint} {what}: {detail}",
                        model=self.model,
                        endpoint=self.endpoint,
                        attempts=attempt,
                        transient=transient,
                        status_code=status if isinstance(status, int) else None,
                    ) from None
                delay = min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)
                logger.warning(
                    "model %r at %s: attempt %d/%d failed (%s); retrying in %.2fs",
                    self.model,
                    self.endpoint,
                    attempt,
                    attempts,
                    detail,
                    delay,
                )
                time.sleep(delay)
        return self._to_response(response)

    def _to_response(self, response: Any) -> ModelResponse:
        import litellm

        choice = response.choices[0]
        message = choice.message
        tool_calls = [_tool_call_dict(tc) for tc in (getattr(message, "tool_calls", None) or [])]
        token_capture = extract_token_capture(response) if self.capture_token_ids else None
        if self.capture_token_ids and token_capture is None:
            logger.warning(
                "model %r at %s: token ids requested but not returned (not a vLLM endpoint "
                "with return_token_ids support?); token_capture is None",
                self.model,
                self.endpoint,
            )
        usage_obj = getattr(response, "usage", None)
        usage: dict = {}
        if usage_obj is not None:
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                value = getattr(usage_obj, key, None)
                if isinstance(value, int):
                    usage[key] = value
        try:
            cost = float(litellm.completion_cost(completion_response=response, model=self.model))
        except Exception as e:  # self-hosted / unmapped models have no price
            logger.debug("no cost for %s: %s", self.model, e)
            cost = 0.0
        return ModelResponse(
            content=getattr(message, "content", None),
            tool_calls=tool_calls,
            token_capture=token_capture,
            usage=usage,
            cost=cost,
            raw_model=str(getattr(response, "model", "") or self.model),
            finish_reason=getattr(choice, "finish_reason", None),
        )
