"""One real vLLM server (CPU build, its own venv) for `tiny-qwen3` per test session, shared by
every test that serves a model (several adapters on one base), and tiny PEFT adapters with
perturbed lora_B weights (so they change outputs). Cached at module level: each is built once
however many test modules ask for it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

STUDENT = "tiny-qwen3"
TEST_VARIANT = "serve-test"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_lock = threading.Lock()


@lru_cache(maxsize=1)
def student():
    from coop_dag.training.students import get_student

    return get_student(STUDENT)


@lru_cache(maxsize=1)
def tokenizer():
    return student().load_tokenizer()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_started: dict = {}


def start_server_early() -> None:
    """Start the session's vLLM in a background thread (it takes a minute or two on 2 cores),
    so it loads while the tests that do not need it run."""
    with _lock:
        if "thread" in _started:
            return
        # built here, not in the thread: transformers' lazy imports are not thread-safe (a
        # test importing it meanwhile made the thread's `from transformers import AutoConfig`
        # fail), and building the student is the only part of the start that imports it
        student()

        def run() -> None:
            try:
                _started["endpoint"] = _start()
            except BaseException as exc:  # reported by server()
                _started["error"] = exc

        _started["thread"] = threading.Thread(target=run, daemon=True)
        _started["thread"].start()


def _start():
    from coop_dag.serving.leases import stop_server
    from resources.serving import ServingResource

    state = Path(tempfile.mkdtemp(prefix="coop-vllm-state-"))
    # a small KV cache: tiny-qwen3 needs little, and the suite shares the machine
    resource = ServingResource(
        port=_free_port(), state_dir=str(state), max_loras=4, cpu_kv_cache_gib=1
    )
    # registered before it starts: a session that ends while it loads stops it too
    atexit.register(stop_server, state, resource.port, lock=False)
    endpoint = resource.ensure(STUDENT)
    _started["resource"] = resource
    return endpoint


def server():
    """The session's real vLLM (CPU build, its own venv) serving tiny-qwen3, started through
    the serving resource like every served model; stopped at exit."""
    start_server_early()
    _started["thread"].join()
    if "error" in _started:
        raise _started["error"]
    return _started["endpoint"]


def serving_resource(**overrides):
    """A ServingResource attached to the session's server."""
    from resources.serving import ServingResource

    return ServingResource(url=server().url, **overrides)


class FaultProxy:
    """A real HTTP proxy in front of the session's vLLM that misbehaves on purpose, for the
    swap-verification tests: ``base_only`` answers every completion with the base model (an
    adapter that is not applied); ``sticky`` loads every new adapter name from the path of the
    first one loaded through it (a server that keeps the old weights under a new name);
    ``die_after``: after that many chat completions every request is refused with 503 (a model
    server killed mid-run). :meth:`die` stops the proxy outright: from then on connections are
    refused, as they are by a server that was killed."""

    def __init__(
        self,
        upstream: str,
        *,
        base_only: bool = False,
        sticky: bool = False,
        die_after: int | None = None,
    ):
        import http.server
        import urllib.request

        self.upstream = upstream.rstrip("/")
        self.first_path: str | None = None
        self.completions = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self, method: str) -> None:
                if die_after is not None and self.path.endswith("/chat/completions"):
                    proxy.completions += 1
                if die_after is not None and proxy.completions > die_after:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = None
                if method == "POST":
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    data = json.loads(raw or b"{}")
                    if base_only and self.path.endswith("/chat/completions"):
                        data["model"] = STUDENT
                    if sticky and self.path.endswith("/load_lora_adapter"):
                        proxy.loaded[data.get("lora_name")] = data.get("lora_path")
                        proxy.first_path = proxy.first_path or data.get("lora_path")
                        data["lora_path"] = proxy.first_path
                    body = json.dumps(data).encode()
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=method,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        status, payload = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                if sticky and self.path.startswith("/v1/models"):
                    payload = proxy._claim_paths(payload)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        import urllib.error  # noqa: F401  (used in the handler)

        self.loaded: dict[str, str] = {}
        self._dead = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _claim_paths(self, payload: bytes) -> bytes:
        """/v1/models as the seed's server showed it: every name at the path it was asked to
        load from, whatever it actually loaded."""
        data = json.loads(payload)
        for card in data.get("data", []):
            if card.get("id") in self.loaded:
                card["root"] = self.loaded[card["id"]]
        return json.dumps(data).encode()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def die(self) -> None:
        """Stop listening: every later connection is refused (requests in flight finish)."""
        if not self._dead:
            self._dead = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def __exit__(self, *exc) -> None:
        self.die()


@lru_cache(maxsize=1)
def adapters() -> dict[str, str]:
    """Tiny adapters under a temp dir:

    - ``A``, ``B``: trained-ish (lora_B perturbed with different seeds), lineage.json with
      variant ``serve-test`` and the student's tokenizer sha;
    - ``A_copy``: A's files in another dir (same weights, same content name);
    - ``zero``: a fresh, untrained adapter (all-zero lora_B);
    - ``no_config``: A without adapter_config.json;
    - ``other_base``: A's weights claiming another base model.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from coop_dag.training.adapters import write_lineage

    root = Path(tempfile.mkdtemp(prefix="coop-serve-adapters-"))
    atexit.register(shutil.rmtree, root, True)
    s = student()
    model = s.load_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
        )
    out: dict[str, str] = {}
    pm.save_pretrained(str(root / "zero"))
    out["zero"] = str(root / "zero")
    for label, seed in (("A", 1), ("B", 2)):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        d = root / label
        pm.save_pretrained(str(d))
        write_lineage(
            d,
            {
                "variant": TEST_VARIANT,
                "student": s.name,
                "tokenizer_sha256": s.tokenizer_sha256,
                "base_model": str(s.model_dir),
            },
        )
        out[label] = str(d)
    shutil.copytree(root / "A", root / "A_copy")
    out["A_copy"] = str(root / "A_copy")
    shutil.copytree(root / "A", root / "no_config")
    (root / "no_config" / "adapter_config.json").unlink()
    out["no_config"] = str(root / "no_config")
    shutil.copytree(root / "A", root / "other_base")
    (root / "other_base" / "lineage.json").unlink()
    cfg_path = root / "other_base" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen3-8B"
    cfg_path.write_text(json.dumps(cfg))
    out["other_base"] = str(root / "other_base")
    return out


def unload_all(srv) -> None:
    """Leave the shared server with no adapters (between tests)."""
    for name in srv.engine.adapters():
        try:
            srv.engine.unload_adapter(name)
        except Exception:
            pass
