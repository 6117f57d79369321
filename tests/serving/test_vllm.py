"""coop_dag.serving.vllm_launch and coop_dag.serving.vllm: the `vllm serve` command in full, and
the HTTP client against a small stdlib server that mimics vLLM's health / models / LoRA
load-unload endpoints (current vLLM's 400 on a duplicate lora_name, and the seed's vLLM that
answered 200 and kept the old weights)."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coop_dag.serving.vllm import (
    AdapterAlreadyLoaded,
    AdapterNotLoaded,
    VllmEngine,
    VllmError,
    attach,
)
from coop_dag.serving.vllm_launch import (
    VllmLauncher,
    VllmServeConfig,
    VllmServer,
    lora_rank_slot,
    serve_command,
)

BASE = "Qwen/Qwen3-4B"


# --------------------------------------------------------------------------- commands


def test_serve_args_in_full():
    cfg = VllmServeConfig(
        model=BASE,
        host="0.0.0.0",
        port=8011,
        served_model_name="qwen3-4b",
        max_model_len=32768,
        max_lora_rank=32,
        max_loras=2,
    )
    assert cfg.args() == [
        BASE,
        "--host", "0.0.0.0",
        "--port", "8011",
        "--served-model-name", "qwen3-4b",
        "--max-model-len", "32768",
        "--enable-lora",
        "--max-lora-rank", "32",
        "--max-loras", "2",
        "--enable-auto-tool-choice",
        "--tool-call-parser", "qwen3_coder",
        "--seed", "0",
    ]  # fmt: skip
    assert "--reasoning-parser" not in cfg.args()  # the seed's footgun: never by default
    assert cfg.environment() == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert cfg.url == "http://127.0.0.1:8011"
    assert cfg.base_model_id == "qwen3-4b"


def test_serve_command_in_vllm_environment():
    cfg = VllmServeConfig(model="/models/Qwen3-4B", port=8000, max_lora_rank=64)
    cmd = serve_command(cfg, VllmLauncher(python="/opt/vllm-env/bin/python"))
    assert cmd.argv == (
        "/opt/vllm-env/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/Qwen3-4B",
        "--host", "127.0.0.1", "--port", "8000",
        "--enable-lora", "--max-lora-rank", "64", "--max-loras", "4",
        "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
        "--seed", "0",
    )  # fmt: skip
    assert cmd.env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert cmd.container_name is None
    # the CPU build: memory sized by VLLM_CPU_KVCACHE_SPACE, every core on the model
    cpu = VllmServeConfig(model="/m", device="cpu", dtype="float32", cpu_kv_cache_gib=3,
                          cpu_threads=2)  # fmt: skip
    assert cpu.args()[-4:] == ["--dtype", "float32", "--seed", "0"]
    assert "--gpu-memory-utilization" not in cpu.args()
    assert cpu.environment() == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "3",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def test_serve_command_in_container():
    cfg = VllmServeConfig(
        model="/models/Qwen3-4B",
        port=8000,
        reasoning_parser="qwen3",  # only when asked for
        lora_modules={"student-0123456789ab": "/data/adapters/student-0123456789ab"},
        extra_args=("--gpu-memory-utilization", "0.85"),
    )
    launcher = VllmLauncher(
        image="vllm/vllm-openai:v0.32.0",
        mounts=(("/data/adapters", "/data/adapters", "ro"),),
    )
    cmd = serve_command(cfg, launcher, name="coop-dag-vllm-test")
    assert cmd.argv == (
        "docker", "run", "--rm", "--ipc=host", "--gpus", "all",
        "--name", "coop-dag-vllm-test",
        "-e", "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
        "-e", "HF_HUB_OFFLINE", "-e", "HF_TOKEN", "-e", "HF_HOME", "-e", "WANDB_API_KEY",
        "-e", "VLLM_API_KEY",
        "-v", "/models/Qwen3-4B:/models/Qwen3-4B:ro",
        "-v", "/data/adapters/student-0123456789ab:/data/adapters/student-0123456789ab:ro",
        "-v", "/data/adapters:/data/adapters:ro",
        "-p", "127.0.0.1:8000:8000",
        "--entrypoint", "vllm",
        "vllm/vllm-openai:v0.32.0",
        "serve", "/models/Qwen3-4B",
        "--host", "0.0.0.0", "--port", "8000",
        "--enable-lora", "--max-lora-rank", "32", "--max-loras", "4",
        "--lora-modules", "student-0123456789ab=/data/adapters/student-0123456789ab",
        "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
        "--reasoning-parser", "qwen3",
        "--seed", "0",
        "--gpu-memory-utilization", "0.85",
    )  # fmt: skip
    assert cmd.env == {} and cmd.container_name == "coop-dag-vllm-test"


def test_no_tool_parser_when_disabled():
    args = VllmServeConfig(model=BASE, tool_call_parser=None).args()
    assert "--enable-auto-tool-choice" not in args and "--tool-call-parser" not in args


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"max_lora_rank": 24}, "is not one vLLM accepts"),
        ({"max_loras": 0}, "max_loras"),
        ({"port": 0}, "port"),
        ({"extra_args": ("--reasoning-parser", "qwen3")}, "through VllmServeConfig"),
        ({"model": ""}, "model is empty"),
        ({"device": "cpu", "cpu_kv_cache_gib": 0.5}, "whole number of GiB"),
    ],
)
def test_bad_serve_configs(kw, needle):
    with pytest.raises(VllmError, match=needle):
        VllmServeConfig(**{"model": BASE, **kw}).args()


def test_lora_rank_slot():
    assert [lora_rank_slot(r) for r in (1, 2, 8, 9, 32, 33, 320, 512)] == [
        1, 8, 8, 16, 32, 64, 320, 512,
    ]  # fmt: skip
    with pytest.raises(VllmError, match="exceeds"):
        lora_rank_slot(1024)


def test_launcher_needs_exactly_one_place():
    with pytest.raises(VllmError, match="exactly one"):
        VllmLauncher()
    with pytest.raises(VllmError, match="exactly one"):
        VllmLauncher(python="p", image="i")


# --------------------------------------------------------------------------- fake vLLM


class FakeVllm:
    """vLLM's LoRA-management HTTP surface on 127.0.0.1 (ephemeral port).

    mode="current": duplicate lora_name -> 400 (vLLM's own message);
    mode="seed":    duplicate lora_name -> 200 "Success" but the old path stays (the seed);
    mode="liar":    load answers 200 and registers nothing.
    runtime_updates=False: the load/unload routes do not exist (404 Not Found), as when
    VLLM_ALLOW_RUNTIME_LORA_UPDATING is unset.
    """

    def __init__(self, mode: str = "current", *, runtime_updates: bool = True, base=BASE):
        self.mode = mode
        self.runtime_updates = runtime_updates
        self.base = base
        self.healthy = True
        self.loras: dict[str, str] = {}
        self.requests: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                if content_type.startswith("text/"):
                    data = body.encode() if isinstance(body, str) else data
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status, message, err_type):
                self._send(
                    status,
                    {"error": {"message": message, "type": err_type, "param": None,
                               "code": status}},
                )  # fmt: skip

            def do_GET(self):
                with fake.lock:
                    fake.requests.append(("GET", self.path, None))
                if self.path == "/health":
                    self._send(200 if fake.healthy else 503, b"")
                elif self.path == "/v1/models":
                    cards = [{"id": fake.base, "object": "model", "root": fake.base,
                              "parent": None}]  # fmt: skip
                    cards += [
                        {"id": n, "object": "model", "root": p, "parent": fake.base}
                        for n, p in fake.loras.items()
                    ]
                    self._send(200, {"object": "list", "data": cards})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with fake.lock:
                    fake.requests.append(("POST", self.path, body))
                routes = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
                if self.path not in routes or not fake.runtime_updates:
                    return self._send(404, {"detail": "Not Found"})
                name = (body or {}).get("lora_name")
                if self.path == "/v1/load_lora_adapter":
                    path = (body or {}).get("lora_path")
                    if not name or not path:
                        return self._error(
                            400, "Both 'lora_name' and 'lora_path' must be provided.",
                            "InvalidUserInput",
                        )  # fmt: skip
                    if not Path(path).is_dir():
                        return self._error(
                            404, f"Loading lora {name} failed: No adapter found for {path}",
                            "NotFoundError",
                        )  # fmt: skip
                    if name in fake.loras and fake.mode == "current":
                        return self._error(
                            400,
                            f"The lora adapter '{name}' has already been loaded. If you want "
                            "to load the adapter in place, set 'load_inplace' to True.",
                            "InvalidUserInput",
                        )
                    if fake.mode != "liar":
                        fake.loras.setdefault(name, path)  # the seed: old path kept
                    return self._send(
                        200, f"Success: LoRA adapter '{name}' added successfully.", "text/plain"
                    )
                if name not in fake.loras:
                    return self._error(
                        404, f"The lora adapter '{name}' cannot be found.", "NotFoundError"
                    )
                del fake.loras[name]
                return self._send(
                    200, f"Success: LoRA adapter '{name}' removed successfully.", "text/plain"
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self) -> list[tuple[str, object]]:
        return [(p, b) for m, p, b in self.requests if m == "POST"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def adapters(tmp_path):
    out = {}
    for name in ("student-aaaaaaaaaaaa", "student-bbbbbbbbbbbb"):
        (tmp_path / name).mkdir()
        out[name] = str(tmp_path / name)
    return out


def test_health_models_load_unload(adapters):
    with FakeVllm() as fake:
        engine = VllmEngine(fake.url + "/v1/")  # a /v1 base is accepted too
        assert engine.url == fake.url and engine.api_base == fake.url + "/v1"
        assert engine.health()
        assert [m["id"] for m in engine.list_models()] == [BASE]
        assert engine.adapters() == {}
        name, path = next(iter(adapters.items()))
        engine.load_adapter(name, path)
        assert engine.adapters() == {name: path}
        assert fake.posts() == [("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})]
        engine.unload_adapter(name)
        assert engine.adapters() == {}
        with pytest.raises(AdapterNotLoaded, match="cannot be found"):
            engine.unload_adapter(name)
        fake.healthy = False
        assert not engine.health()


def test_duplicate_name_is_refused_before_posting(adapters):
    (a, pa), (_, pb) = adapters.items()
    with FakeVllm(mode="seed") as fake:  # a server that would silently keep the old path
        engine = VllmEngine(fake.url)
        engine.load_adapter(a, pa)
        with pytest.raises(AdapterAlreadyLoaded, match="already loaded") as err:
            engine.load_adapter(a, pb)
        assert "student-<sha12>" in str(err.value)
        assert len(fake.posts()) == 1  # the second load was never sent
        assert fake.loras == {a: pa}
        with pytest.raises(AdapterAlreadyLoaded, match="a base model"):
            engine.load_adapter(BASE, pb)


def test_vllm_400_on_duplicate_is_already_loaded(adapters, monkeypatch):
    (a, pa), (_, pb) = adapters.items()
    with FakeVllm() as fake:
        engine = VllmEngine(fake.url)
        engine.load_adapter(a, pa)
        # another client loaded it between our check and our POST: vLLM's 400
        monkeypatch.setattr(engine, "list_models", lambda: [{"id": BASE}])
        with pytest.raises(AdapterAlreadyLoaded, match="has already been loaded"):
            engine.load_adapter(a, pb)
        assert fake.posts()[-1] == (
            "/v1/load_lora_adapter",
            {"lora_name": a, "lora_path": pb},
        )


def test_a_silent_no_op_is_detected(adapters):
    (a, pa), (b, pb) = adapters.items()
    with FakeVllm(mode="seed") as fake:
        engine = VllmEngine(fake.url)
        engine.load_adapter(a, pa)
        real = engine.list_models
        calls = {"n": 0}

        def stale_first_listing():  # pre-check misses the existing name once
            calls["n"] += 1
            return [{"id": BASE}] if calls["n"] == 1 else real()

        engine.list_models = stale_first_listing
        with pytest.raises(VllmError, match="the load was a no-op"):
            engine.load_adapter(a, pb)
    with FakeVllm(mode="liar") as fake:
        with pytest.raises(VllmError, match="does not list it"):
            VllmEngine(fake.url).load_adapter(b, pb)


def test_load_errors_are_explained(adapters, tmp_path):
    name, path = next(iter(adapters.items()))
    with FakeVllm(runtime_updates=False) as fake:
        with pytest.raises(VllmError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            VllmEngine(fake.url).load_adapter(name, path)
    with FakeVllm() as fake:
        engine = VllmEngine(fake.url)
        with pytest.raises(VllmError, match="No adapter found") as err:
            engine.load_adapter(name, str(tmp_path / "missing"))
        assert not isinstance(err.value, AdapterAlreadyLoaded)
        with pytest.raises(VllmError, match="invalid LoRA name"):
            engine.load_adapter("two words", path)


def test_unreachable_server():
    with FakeVllm() as fake:
        url = fake.url
    engine = VllmEngine(url, timeout=2)
    assert not engine.health()
    with pytest.raises(VllmError, match="cannot reach vLLM"):
        engine.list_models()
    with pytest.raises(VllmError, match="not healthy after"):
        attach(url, timeout=0.5)
    with pytest.raises(VllmError, match="http"):
        VllmEngine("localhost:8000")


def test_attach_to_a_running_server():
    with FakeVllm() as fake:
        engine = attach(fake.url, timeout=5)
        assert engine.health()


# --------------------------------------------------------------------------- launched


FAKE_VLLM_PYTHON = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"], args
import os
assert os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
port = int(args[args.index("--port") + 1])
if os.environ.get("FAKE_VLLM_CRASH"):
    print("ValueError: max_lora_rank too small", flush=True)
    sys.exit(1)
print("INFO: loading weights", flush=True)
time.sleep(0.3)

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

print(f"INFO: Uvicorn running on http://127.0.0.1:{port}", flush=True)
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fake_vllm_python(tmp_path):
    path = tmp_path / "vllm-python"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_VLLM_PYTHON))
    path.chmod(0o755)
    return str(path)


def test_launched_server_starts_streams_and_stops(fake_vllm_python):
    lines: list[str] = []
    cfg = VllmServeConfig(model=BASE, port=free_port())
    server = VllmServer(
        cfg, VllmLauncher(python=fake_vllm_python), on_log=lines.append, poll_interval=0.1
    )
    with server:
        assert server.running() and server.engine.health()
        pid = server._proc.pid
    assert not server.running()
    assert lines[0] == "INFO: loading weights"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_launched_server_that_dies_reports_its_output(fake_vllm_python, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_CRASH", "1")
    cfg = VllmServeConfig(model=BASE, port=free_port())
    server = VllmServer(
        cfg, VllmLauncher(python=fake_vllm_python), startup_timeout=30, poll_interval=0.1
    )
    start = time.monotonic()
    with pytest.raises(VllmError) as err:
        server.start()
    assert time.monotonic() - start < 20
    assert "exited before becoming healthy" in str(err.value)
    assert "ValueError: max_lora_rank too small" in str(err.value)


def test_launch_refuses_an_occupied_port():
    with FakeVllm() as fake:
        port = int(fake.url.rsplit(":", 1)[1])
        server = VllmServer(VllmServeConfig(model=BASE, port=port), VllmLauncher(python="x"))
        with pytest.raises(VllmError, match="already answers"):
            server.start()
