"""The embedded server over real HTTP (tiny-qwen3 + tiny perturbed LoRA adapters): token
capture equals the TITO renderer, tool calls from both inline formats, vLLM's LoRA routes and
error shapes, the VllmEngine client against it, and a server process killed mid-request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
import serve_helpers as H

from coop_dag.actions import BASH_TOOL, to_qwen_xml
from coop_dag.serve import (
    ChatEngine,
    EmbeddedServer,
    ServeError,
    build_assistant_message,
    free_port,
    serve_main,
    split_reasoning,
)

MESSAGES = [
    {"role": "system", "content": "You are agent1. Coordinate with agent2 before editing."},
    {"role": "user", "content": "Add a --verbose flag to cli.py"},
    {
        "role": "assistant",
        "content": "Plan first.",
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"command": "ls"})},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_0", "content": "cli.py\nREADME.md"},
]

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """A real `python -m coop_dag.serve` process, started now (it loads while the in-process
    tests run) through the serving layer's detached launcher; joined by the test using it."""
    from coop_dag.serving import ensure_embedded_server

    state = tmp_path_factory.mktemp("serve-state")
    port = free_port()
    box: dict = {}

    def start():
        try:
            box["endpoint"] = ensure_embedded_server(
                H.STUDENT,
                port=port,
                state_dir=state,
                extra_args=["--threads", "1"],
                startup_timeout=240,
            )
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    box.update(thread=thread, state=state, port=port)
    yield box
    ep = box.get("endpoint")
    if ep is not None and ep.pid:
        try:
            os.killpg(ep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(spawned):  # `spawned` first: the subprocess loads in parallel
    return H.server()


@pytest.fixture(scope="module")
def adapters():
    return H.adapters()


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "server" in request.fixturenames:
        H.unload_all(H.server())


def http(method: str, url: str, body=None, timeout: float = 120.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype and raw else raw.decode())


def chat(server, **body):
    return http("POST", server.api_base + "/chat/completions", body)


def inject(monkeypatch, server, text: str):
    """Make the model 'generate' exactly `text` then the end-of-turn token (a random tiny
    model never writes tool-call XML): the ids go through the real response path."""
    tok = H.tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"] + [server.engine.student.eot_id]

    def fake(jobs):
        for job in jobs:
            job.output = list(ids)

    monkeypatch.setattr(server.engine, "_run_generate", fake)
    return ids


# --------------------------------------------------------------------------- token capture


def test_litellm_capture_equals_the_tito_renderer(server, adapters):
    from coop_dag.chat import render_ids
    from coop_dag.models import LiteLLMChatModel

    tok = H.tokenizer()
    expected_prompt = render_ids(tok, MESSAGES, [BASH_TOOL])
    http(
        "POST",
        server.api_base + "/load_lora_adapter",
        {"lora_name": "a", "lora_path": adapters["A"]},
    )
    outputs = {}
    for model in ("tiny-qwen3", "a"):
        llm = LiteLLMChatModel(
            f"openai/{model}", api_base=server.api_base, capture_token_ids=True,
            max_tokens=12, retries=0,
        )  # fmt: skip
        resp = llm.query(MESSAGES, [BASH_TOOL])
        cap = resp.token_capture
        assert cap is not None
        assert cap["prompt_token_ids"] == expected_prompt
        out = cap["output_token_ids"]
        assert 0 < len(out) <= 12
        body = out[:-1] if out[-1] == H.student().eot_id else out
        assert tok.decode(body, skip_special_tokens=True) == (resp.content or "")
        assert resp.usage["prompt_tokens"] == len(expected_prompt)
        assert resp.usage["completion_tokens"] == len(out)
        outputs[model] = out
    assert outputs["a"] != outputs["tiny-qwen3"]  # the adapter is applied


def test_greedy_by_default_and_sampling_params(server):
    msgs = MESSAGES[:2]
    _, r1 = chat(server, messages=msgs, max_tokens=6, return_token_ids=True)
    _, r2 = chat(server, messages=msgs, max_tokens=6, return_token_ids=True)
    assert r1["choices"][0]["token_ids"] == r2["choices"][0]["token_ids"]  # greedy
    assert r1["choices"][0]["finish_reason"] == "length"
    sampled = [
        chat(server, messages=msgs, max_tokens=6, temperature=1.5, top_p=0.95, seed=s,
             return_token_ids=True)[1]["choices"][0]["token_ids"]
        for s in (1, 2, 1)
    ]  # fmt: skip
    assert sampled[0] == sampled[2] and sampled[0] != sampled[1]
    # ignore_eos + max_tokens: exactly that many; n=2; logprobs
    _, r = chat(server, messages=msgs, max_tokens=5, ignore_eos=True, n=2, logprobs=True,
                top_logprobs=2, return_token_ids=True)  # fmt: skip
    assert [len(c["token_ids"]) for c in r["choices"]] == [5, 5]
    lp = r["choices"][0]["logprobs"]["content"]
    assert len(lp) == 5 and all(e["logprob"] <= 0 for e in lp)
    assert len(lp[0]["top_logprobs"]) == 2
    assert lp[0]["top_logprobs"][0]["logprob"] >= lp[0]["logprob"] - 1e-6


def test_stop_strings_and_eot(monkeypatch, server):
    inject(monkeypatch, server, "first part STOP second part")
    _, r = chat(server, messages=MESSAGES[:2], stop=["STOP"], return_token_ids=True)
    c = r["choices"][0]
    assert c["message"]["content"] == "first part "
    assert c["finish_reason"] == "stop" and c["stop_reason"] == "STOP"
    _, r = chat(server, messages=MESSAGES[:2], return_token_ids=True)
    c = r["choices"][0]
    assert c["message"]["content"] == "first part STOP second part"
    assert c["finish_reason"] == "stop" and c["token_ids"][-1] == H.student().eot_id


# --------------------------------------------------------------------------- tool calls


XML_TEXT = "I'll plan first, then list.\n" + to_qwen_xml("ls -la && cat 'a b'")
HERMES_TEXT = (
    'Checking.\n<tool_call>\n{"name": "bash", "arguments": {"command": "pwd"}}\n</tool_call>'
)


@pytest.mark.parametrize(
    "text, content, command",
    [
        (XML_TEXT, "I'll plan first, then list.\n", "ls -la && cat 'a b'"),
        (HERMES_TEXT, "Checking.\n", "pwd"),
    ],
)
def test_tool_calls_from_both_formats_over_http(monkeypatch, server, text, content, command):
    from coop_dag.models import LiteLLMChatModel

    ids = inject(monkeypatch, server, text)
    llm = LiteLLMChatModel(
        "openai/tiny-qwen3", api_base=server.api_base, capture_token_ids=True, retries=0
    )
    resp = llm.query(MESSAGES, [BASH_TOOL])
    assert resp.content == content
    assert len(resp.tool_calls) == 1
    fn = resp.tool_calls[0]["function"]
    assert fn["name"] == "bash" and json.loads(fn["arguments"]) == {"command": command}
    assert resp.tool_calls[0]["id"].startswith("chatcmpl-tool-")
    assert resp.finish_reason == "tool_calls"
    # raw ids: the markup (and the end-of-turn id) is in token_ids, not in content
    assert resp.token_capture["output_token_ids"] == ids
    assert H.tokenizer().decode(ids[:-1]) == text
    # without tools in the request nothing is parsed (as vLLM)
    _, r = chat(server, messages=MESSAGES[:2])
    assert r["choices"][0]["message"]["content"] == text
    assert r["choices"][0]["message"]["tool_calls"] == []
    _, r = chat(server, messages=MESSAGES[:2], tools=[BASH_TOOL], tool_choice="none")
    assert r["choices"][0]["message"]["tool_calls"] == []


def test_no_reasoning_parser_by_default():
    # the seed: a student that never closes <think> lost every tool call to the parser
    text = "<think>\nI should plan.\n" + to_qwen_xml("ls")
    msg = build_assistant_message(text, parse_tools=True)
    assert "reasoning_content" not in msg
    assert msg["content"] == "<think>\nI should plan.\n"  # an unclosed span is not reasoning
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}
    plain = "Plan: I take a.py\n" + to_qwen_xml("ls")
    msg = build_assistant_message(plain, parse_tools=True)
    assert msg["content"] == "Plan: I take a.py\n" and len(msg["tool_calls"]) == 1
    # configured: only a closed leading span moves; an unclosed one stays content
    closed = "<think>\nreason\n</think>\n\nPlan.\n" + to_qwen_xml("ls")
    msg = build_assistant_message(closed, parse_tools=True, reasoning_parser="qwen3")
    assert msg["reasoning_content"] == "reason"
    assert msg["content"] == "Plan.\n" and len(msg["tool_calls"]) == 1
    msg = build_assistant_message(plain, parse_tools=True, reasoning_parser="qwen3")
    assert msg["reasoning_content"] is None and len(msg["tool_calls"]) == 1
    msg = build_assistant_message(text, parse_tools=True, reasoning_parser="qwen3")
    assert msg["reasoning_content"] is None and len(msg["tool_calls"]) == 1  # not swallowed
    assert split_reasoning("abc</think>rest", think_shape="qwen3.5") == ("abc", "rest")
    assert split_reasoning("abc</think>rest") == (None, "abc</think>rest")


def test_enable_thinking_only_when_asked(server):
    from coop_dag.chat import render_ids

    tok = H.tokenizer()
    _, plain = chat(server, messages=MESSAGES[:2], max_tokens=1, return_token_ids=True)
    assert plain["prompt_token_ids"] == render_ids(tok, MESSAGES[:2])
    _, off = chat(
        server, messages=MESSAGES[:2], max_tokens=1, return_token_ids=True,
        chat_template_kwargs={"enable_thinking": False},
    )  # fmt: skip
    assert off["prompt_token_ids"] == render_ids(tok, MESSAGES[:2], enable_thinking=False)
    assert off["prompt_token_ids"] != plain["prompt_token_ids"]


# --------------------------------------------------------------------------- models, LoRA


def test_models_load_unload_and_same_name_reload(server, adapters):
    base = H.student()
    status, models = http("GET", server.api_base + "/models")
    assert status == 200
    assert models["data"] == [
        {**models["data"][0], "id": "tiny-qwen3", "root": str(base.model_dir), "parent": None}
    ]
    load = server.api_base + "/load_lora_adapter"
    status, text = http("POST", load, {"lora_name": "plan-first", "lora_path": adapters["A"]})
    assert status == 200 and text.startswith("Success")
    cards = {c["id"]: c for c in http("GET", server.api_base + "/models")[1]["data"]}
    assert cards["plan-first"]["root"] == adapters["A"]
    assert cards["plan-first"]["parent"] == "tiny-qwen3"
    _, before = chat(server, model="plan-first", messages=MESSAGES[:2], max_tokens=6,
                     return_token_ids=True)  # fmt: skip
    # the seed's hot reload: same name, new path -> 400 (current vLLM), nothing changes
    status, err = http("POST", load, {"lora_name": "plan-first", "lora_path": adapters["B"]})
    assert status == 400 and "has already been loaded" in err["error"]["message"]
    cards = {c["id"]: c for c in http("GET", server.api_base + "/models")[1]["data"]}
    assert cards["plan-first"]["root"] == adapters["A"]
    _, after = chat(server, model="plan-first", messages=MESSAGES[:2], max_tokens=6,
                    return_token_ids=True)  # fmt: skip
    assert after["choices"][0]["token_ids"] == before["choices"][0]["token_ids"]
    # load_inplace really swaps (and /v1/models says so)
    status, _ = http(
        "POST", load, {"lora_name": "plan-first", "lora_path": adapters["B"], "load_inplace": True}
    )
    assert status == 200
    cards = {c["id"]: c for c in http("GET", server.api_base + "/models")[1]["data"]}
    assert cards["plan-first"]["root"] == adapters["B"]
    _, swapped = chat(server, model="plan-first", messages=MESSAGES[:2], max_tokens=6,
                      return_token_ids=True)  # fmt: skip
    assert swapped["choices"][0]["token_ids"] != before["choices"][0]["token_ids"]
    unload = server.api_base + "/unload_lora_adapter"
    status, text = http("POST", unload, {"lora_name": "plan-first"})
    assert status == 200 and "removed" in text
    status, err = http("POST", unload, {"lora_name": "plan-first"})
    assert status == 404 and "cannot be found" in err["error"]["message"]
    status, err = chat(server, model="plan-first", messages=MESSAGES[:2], max_tokens=2)
    assert status == 404
    status, err = http("POST", load, {"lora_name": "x"})
    assert status == 400 and "Both 'lora_name' and 'lora_path'" in err["error"]["message"]


def test_bad_adapter_dirs_are_refused_and_nothing_loads(server, adapters, tmp_path):
    load = server.api_base + "/load_lora_adapter"
    cases = {
        "no_config": (400, "missing adapter_config.json"),
        "other_base": (400, "built for base model 'Qwen/Qwen3-8B'"),
        "zero": (400, "all zero"),
    }
    for key, (code, needle) in cases.items():
        status, err = http("POST", load, {"lora_name": key, "lora_path": adapters[key]})
        assert status == code, (key, err)
        message = err["error"]["message"]
        assert needle in message and "nothing was loaded" in message, message
        assert "already" not in message  # VllmEngine reads "already" as a duplicate name
    status, err = http("POST", load, {"lora_name": "gone", "lora_path": str(tmp_path / "nope")})
    assert status == 404 and "No adapter found" in err["error"]["message"]
    # another base model's tokenizer recorded in lineage.json
    import shutil

    from coop_dag.adapters import write_lineage

    odd = tmp_path / "odd_tokenizer"
    shutil.copytree(adapters["A"], odd)
    write_lineage(odd, {"variant": "x", "tokenizer_sha256": "0" * 64})
    status, err = http("POST", load, {"lora_name": "odd", "lora_path": str(odd)})
    assert status == 400 and "tokenizer sha256" in err["error"]["message"]
    ids = [c["id"] for c in http("GET", server.api_base + "/models")[1]["data"]]
    assert ids == ["tiny-qwen3"]


def test_vllm_engine_client_against_the_embedded_server(server, adapters, monkeypatch):
    from coop_dag.vllm import AdapterAlreadyLoaded, AdapterNotLoaded, VllmEngine, VllmError

    engine = VllmEngine(server.api_base)
    assert engine.health()
    assert [m["id"] for m in engine.list_models()] == ["tiny-qwen3"]
    engine.load_adapter("student-a", adapters["A"])  # also confirms root == path
    assert engine.adapters() == {"student-a": adapters["A"]}
    with pytest.raises(AdapterAlreadyLoaded):
        engine.load_adapter("student-a", adapters["B"])  # refused before posting
    monkeypatch.setattr(engine, "list_models", lambda: [{"id": "tiny-qwen3"}])
    with pytest.raises(AdapterAlreadyLoaded, match="has already been loaded"):
        engine.load_adapter("student-a", adapters["B"])  # our 400, read as vLLM's
    monkeypatch.undo()
    with pytest.raises(VllmError, match="built for base model") as err:
        engine.load_adapter("bad", adapters["other_base"])
    assert not isinstance(err.value, AdapterAlreadyLoaded)
    engine.unload_adapter("student-a")
    with pytest.raises(AdapterNotLoaded):
        engine.unload_adapter("student-a")
    assert engine.adapters() == {}


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_404_naming_it(server):
    from coop_dag.models import LiteLLMChatModel, ModelError

    status, err = chat(server, model="student-000000000000", messages=MESSAGES[:2])
    assert status == 404
    assert "student-000000000000" in err["error"]["message"]
    assert err["error"]["param"] == "model"
    llm = LiteLLMChatModel("openai/nope", api_base=server.api_base, retries=2, backoff=0.01)
    with pytest.raises(ModelError) as exc:
        llm.query(MESSAGES[:2], [BASH_TOOL])
    assert exc.value.attempts == 1 and not exc.value.transient  # a 404 is not retried
    assert "nope" in str(exc.value)


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}
                ]
            },
            "messages[0].tool_calls[0].function.name",
        ),
        ({"messages": MESSAGES[:2], "temperature": -1}, "temperature"),
        ({"messages": MESSAGES[:2], "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES[:2], "max_tokens": 10**9}, "max_tokens"),
        ({"messages": MESSAGES[:2], "tools": [{"type": "function"}]}, "tools[0]"),
        ({"messages": MESSAGES[:2], "tool_choice": "required"}, "tool_choice"),
        ({"messages": MESSAGES[:2], "chat_template": "{{ x }}"}, "chat_template"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(server, body, param):
    status, err = chat(server, **body)
    assert status == 400, err
    assert err["error"]["param"] == param
    assert param.split("[")[0] in err["error"]["message"] or param in err["error"]["message"]


def test_not_json_and_unknown_route(server):
    req = urllib.request.Request(
        server.api_base + "/chat/completions", data=b"{nope", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert http("GET", server.url + "/v1/nothing")[0] == 404


def test_port_in_use_is_named(server):
    with pytest.raises(ServeError, match=f"port {server.port} on 127.0.0.1 is in use"):
        EmbeddedServer(engine=ChatEngine(H.STUDENT), port=server.port).bind()
    other = EmbeddedServer(engine=ChatEngine(H.STUDENT), port=server.port, port_fallback=True)
    try:
        other.bind()
        assert other.port != server.port
        assert http("GET", other.url + "/health")[0] == 503  # bound, model not loaded
    finally:
        other.stop()


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        serve_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--student", "--port", "--adapter", "--reasoning-parser", "NAME=PATH"):
        assert flag in text


def test_stream_is_one_chunk_per_choice(monkeypatch, server):
    inject(monkeypatch, server, XML_TEXT)
    req = urllib.request.Request(
        server.api_base + "/chat/completions",
        data=json.dumps({"messages": MESSAGES[:2], "tools": [BASH_TOOL], "stream": True}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        events = [ln[6:] for ln in r.read().decode().splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])["choices"][0]
    assert first["delta"]["tool_calls"][0]["function"]["name"] == "bash"
    assert json.loads(events[1])["choices"][0]["finish_reason"] == "tool_calls"


# --------------------------------------------------------------------------- a real process


def test_server_process_killed_mid_request(spawned):
    from coop_dag.models import LiteLLMChatModel, ModelError
    from coop_dag.serving import code_fingerprint, ensure_embedded_server
    from coop_dag.vllm import VllmEngine

    spawned["thread"].join(240)
    assert "error" not in spawned, spawned.get("error")
    ep = spawned["endpoint"]
    assert ep.started and ep.pid and ep.base_model_id == H.STUDENT
    engine = VllmEngine(ep.url)
    assert engine.health() and engine.adapters() == {}
    # a second caller reuses it (same pid) instead of starting another
    again = ensure_embedded_server(H.STUDENT, port=spawned["port"], state_dir=spawned["state"])
    assert not again.started and again.pid == ep.pid
    recorded = json.loads((spawned["state"] / f"server-{spawned['port']}.json").read_text())
    assert recorded["code"] == code_fingerprint()
    llm = LiteLLMChatModel(
        f"openai/{H.STUDENT}", api_base=ep.api_base, capture_token_ids=True, max_tokens=20000,
        extra_body={"ignore_eos": True}, retries=2, backoff=0.2, timeout=120,
    )  # fmt: skip
    box: dict = {}

    def query():
        try:
            box["response"] = llm.query(MESSAGES[:2], [BASH_TOOL])
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=query, daemon=True)
    worker.start()
    time.sleep(2.0)  # the request is being generated (20000 tokens take far longer)
    assert worker.is_alive()
    os.killpg(ep.pid, signal.SIGKILL)
    worker.join(60)
    assert not worker.is_alive()
    err = box.get("error")
    assert isinstance(err, ModelError), box
    assert err.transient and err.attempts == 3
    assert ep.api_base in str(err)
    assert not engine.health()


def test_a_server_started_from_other_code_is_restarted(tmp_path, monkeypatch):
    """A detached server outlives runs; after a checkout changes the code it runs, the next
    ensure_* restarts it instead of serving stale behaviour."""
    from coop_dag import serving

    port = free_port()
    first = serving.ensure_embedded_server(
        H.STUDENT, port=port, state_dir=tmp_path, extra_args=["--threads", "1"],
        startup_timeout=240,
    )  # fmt: skip
    try:
        same = serving.ensure_embedded_server(H.STUDENT, port=port, state_dir=tmp_path)
        assert same.pid == first.pid and not same.started
        monkeypatch.setattr(serving, "code_fingerprint", lambda: "0" * 12)
        said: list[str] = []
        fresh = serving.ensure_embedded_server(
            H.STUDENT, port=port, state_dir=tmp_path, startup_timeout=240, log=said.append
        )
        assert fresh.started and fresh.pid != first.pid
        assert not serving._pid_alive(first.pid)
        assert any("runs other code" in line for line in said)
    finally:
        serving.stop_server(tmp_path, port)
