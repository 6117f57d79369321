"""vLLM, the one serving engine (CPU build here, GPU image on the cluster): its HTTP client.
How it is launched (the `vllm serve` command and a started process) is `serving.vllm_launch`.

vLLM runs in its own environment (a separate Python) or its container image
(`vllm/vllm-openai`), never in the core venv; or it is already running and we attach to its
URL. `VllmEngine` speaks these endpoints:

- ``GET /health`` — 200 when the engine is up;
- ``GET /v1/models`` — ``{"object": "list", "data": [{"id", "root", "parent", ...}]}``; a
  LoRA adapter is listed with ``parent`` = the base model and ``root`` = its path;
- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` — 200 with a plain-text
  "Success: ..." body; 400 when the name is already loaded (current vLLM), 404 when the
  server was started without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (no such route);
- ``POST /v1/unload_lora_adapter {"lora_name"}`` — 200, or 404 for an unknown name.

The seed's footgun, and the answer here: re-loading an existing ``lora_name`` with a new path
returned "Success" and kept serving the old weights (the vLLM of the seed).
`VllmEngine.load_adapter` refuses a name that /v1/models already lists, treats vLLM's 400 the
same way, and after a load checks that /v1/models lists the name with the path given. Names
are content addresses (``student-<sha12>``, `coop_dag.training.adapters.adapter_name`) so a
retrain never needs one.

Checked against vllm-project/vllm sources in the code index: ``vllm/entrypoints/openai/
models/serving.py`` (00153c8b: load/unload checks, 400 "has already been loaded", 404
unknown name, ``ModelCard(id, root, parent)``), ``docs/features/lora.md`` (05863f17:
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, request bodies).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "AdapterAlreadyLoaded",
    "AdapterNotLoaded",
    "VllmEngine",
    "VllmError",
    "as_engine",
    "attach",
]


class VllmError(RuntimeError):
    """vLLM refused a request, is unreachable, or did not start."""


class AdapterAlreadyLoaded(VllmError):
    """A LoRA name that is already loaded; vLLM would keep (or once silently kept) the old
    weights. Load new weights under a new, content-addressed name."""


class AdapterNotLoaded(VllmError):
    """Unloading a LoRA name the server does not have."""


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return text


class VllmEngine:
    """HTTP client for a running vLLM (or the embedded server): health, models, LoRA."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0):
        base = url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        if not base.startswith(("http://", "https://")):
            raise VllmError(f"vLLM URL must start with http:// or https://, got {url!r}")
        self.url = base
        self.api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"VllmEngine({self.url!r})"

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`) for chat clients."""
        return self.url + "/v1"

    # -- transport ---------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout=None
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VllmError(f"{method} {self.url}{path}: cannot reach vLLM ({reason})") from exc

    # -- endpoints ---------------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> bool:
        """True when GET /health answers 200; False when unreachable or unhealthy."""
        try:
            status, _ = self._request("GET", "/health", timeout=timeout)
        except VllmError:
            return False
        return status == 200

    def wait_until_healthy(
        self,
        timeout: float = 900.0,
        *,
        interval: float = 2.0,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Poll /health until 200; VllmError on timeout or when `alive()` turns False."""
        deadline = time.monotonic() + timeout
        while True:
            if self.health(timeout=min(5.0, max(timeout, 0.1))):
                return
            if alive is not None and not alive():
                raise VllmError(f"vLLM at {self.url} exited before becoming healthy")
            if time.monotonic() >= deadline:
                raise VllmError(f"vLLM at {self.url} not healthy after {timeout:g}s")
            time.sleep(interval)

    def list_models(self) -> list[dict[str, Any]]:
        """The model cards of GET /v1/models (base model(s) first, then LoRA adapters)."""
        status, body = self._request("GET", "/v1/models")
        if status != 200:
            raise VllmError(f"GET /v1/models -> {status}: {_error_message(body)}")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise VllmError(f"GET /v1/models returned non-JSON: {body[:200]!r}") from exc
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise VllmError(f"GET /v1/models: no 'data' list in {data!r}")
        return [c for c in cards if isinstance(c, dict)]

    def adapters(self) -> dict[str, str | None]:
        """Loaded LoRA adapters: name -> path (cards with a parent model)."""
        return {c["id"]: c.get("root") for c in self.list_models() if c.get("parent")}

    def load_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Load the adapter at `path` (as the server sees it) under `name`, refusing a name
        that is already loaded, then confirm /v1/models lists it at that path."""
        if not name or any(ch.isspace() for ch in name):
            raise VllmError(f"invalid LoRA name {name!r}")
        lora_path = os.fspath(path)
        loaded = {c.get("id"): c for c in self.list_models()}
        if name in loaded:
            card = loaded[name]
            what = "a base model" if not card.get("parent") else f"at {card.get('root')!r}"
            raise AdapterAlreadyLoaded(
                f"LoRA name {name!r} is already loaded ({what}) on {self.url}; re-loading a "
                "name can silently keep serving the old weights. Serve new weights under a "
                "new name (student-<sha12>) or unload this one first."
            )
        status, body = self._request(
            "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": lora_path}
        )
        message = _error_message(body)
        if status == 400 and "already" in message.lower():
            raise AdapterAlreadyLoaded(f"vLLM refused to load {name!r}: {message}")
        if status == 404 and name not in message and "lora" not in message.lower():
            raise VllmError(
                f"POST /v1/load_lora_adapter -> 404 ({message}): start vLLM with "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora"
            )
        if status != 200:
            raise VllmError(f"vLLM could not load {name!r} from {lora_path}: {status} {message}")
        after = {c.get("id"): c for c in self.list_models()}
        card = after.get(name)
        if card is None:
            raise VllmError(f"vLLM answered 200 for {name!r} but /v1/models does not list it")
        root = card.get("root")
        if root is not None and os.fspath(root).rstrip("/") != lora_path.rstrip("/"):
            raise VllmError(
                f"vLLM lists {name!r} at {root!r}, not {lora_path!r}: the load was a no-op"
            )

    def unload_adapter(self, name: str) -> None:
        status, body = self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        message = _error_message(body)
        if status == 404 and ("cannot be found" in message or name in message):
            raise AdapterNotLoaded(f"LoRA {name!r} is not loaded on {self.url}: {message}")
        if status != 200:
            raise VllmError(f"vLLM could not unload {name!r}: {status} {message}")


def attach(url: str, *, api_key: str | None = None, timeout: float = 30.0) -> VllmEngine:
    """A client for an already running server; VllmError unless /health answers 200."""
    engine = VllmEngine(url, api_key=api_key)
    engine.wait_until_healthy(timeout, interval=1.0)
    return engine


def as_engine(engine: VllmEngine | str, api_key: str | None = None) -> VllmEngine:
    """``engine`` itself, or a client for it when it is a URL."""
    return engine if isinstance(engine, VllmEngine) else VllmEngine(engine, api_key=api_key)
