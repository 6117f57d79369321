"""LiteLLMChatModel against a scripted OpenAI-compatible server over real HTTP."""

import dataclasses
import json
import logging
import time

import pytest

from coop_dag.agent.actions import BASH_TOOL, parse_actions
from coop_dag.agent.models import (
    ChatModel,
    LiteLLMChatModel,
    ModelCredentialsError,
    ModelError,
    ModelResponse,
    prepare_messages,
)

try:
    from openai_test_server import OpenAITestServer, Reply
except ImportError:  # tests/ imported as a package
    from tests.openai_test_server import OpenAITestServer, Reply

KEY_ENV = "COOP_DAG_TEST_API_KEY"
SECRET = "sk-test-SECRET-9f8e7d6c5b4a"
MESSAGES = [
    {"role": "system", "content": "You are agent1."},
    {"role": "user", "content": "Implement feature 1.", "extra": {"timestamp": 1.0}},
]
LS_CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "bash", "arguments": json.dumps({"command": "ls -la"})},
}


@pytest.fixture
def server():
    with OpenAITestServer([Reply(content="ok")]) as s:
        yield s


def make_model(server, **kw):
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 10.0)
    return LiteLLMChatModel("openai/qwen3-test", api_base=server.base_url, **kw)


def test_token_ids_captured_exactly(server):
    prompt_ids = [151644, 8948, 198, 2610, 525, 8315, 16, 13]
    output_ids = [10061, 752, 1401, 2163, 13, 151657, 198, 27, 1688, 28, 46216, 29, 151645]
    server.script(
        Reply(
            content="Let me look.",
            tool_calls=[LS_CALL],
            prompt_token_ids=prompt_ids,
            output_token_ids=output_ids,
        )
    )
    model = make_model(server, capture_token_ids=True)
    resp = model.query(MESSAGES, [BASH_TOOL])

    assert resp.token_capture == {"prompt_token_ids": prompt_ids, "output_token_ids": output_ids}
    assert resp.content == "Let me look."
    assert resp.tool_calls == [LS_CALL]
    assert parse_actions(resp.content, resp.tool_calls) == ["ls -la"]
    assert resp.finish_reason == "tool_calls"
    assert resp.usage == {"prompt_tokens": 8, "completion_tokens": 13, "total_tokens": 21}
    assert resp.raw_model == "qwen3-test"
    assert resp.cost == 0.0  # self-hosted model: no price

    (req,) = server.chat_requests
    assert req.body["return_token_ids"] is True
    assert req.body["model"] == "qwen3-test"
    assert req.body["tools"] == [BASH_TOOL]
    assert req.body["tool_choice"] == "auto"
    assert req.body["temperature"] == 0.0
    # `extra` is ours, never sent
    assert req.body["messages"] == prepare_messages(MESSAGES)
    assert all("extra" not in m for m in req.body["messages"])


def test_no_capture_unless_asked(server):
    resp = make_model(server).query(MESSAGES, [BASH_TOOL])
    assert resp.token_capture is None
    assert "return_token_ids" not in server.chat_requests[0].body


def test_capture_asked_but_not_returned(server, caplog):
    server.script(Reply(content="plain", omit_token_ids=True))
    with caplog.at_level(logging.WARNING, logger="coop_dag.agent.models"):
        resp = make_model(server, capture_token_ids=True).query(MESSAGES, [BASH_TOOL])
    assert resp.token_capture is None and resp.content == "plain"
    assert "token ids requested but not returned" in caplog.text


def test_content_xml_passes_through_for_parse_actions(server):
    xml = (
        "Plan first.\n<tool_call>\n<function=bash>\n<parameter=command>\n"
        "send_message agent2 <<'MSG'\nhi\nMSG\n</parameter>\n</function>\n</tool_call>"
    )
    server.script(Reply(content=xml))
    resp = make_model(server).query(MESSAGES, [BASH_TOOL])
    assert resp.tool_calls == [] and resp.content == xml
    assert parse_actions(resp.content, resp.tool_calls) == ["send_message agent2 <<'MSG'\nhi\nMSG"]


def test_history_with_tool_calls_is_accepted(server):
    history = MESSAGES + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [LS_CALL],
            "extra": {"timestamp": 2.0},
        },
        {
            "role": "tool",
            "tool_call_id": "call_0",
            "content": "<returncode>0</returncode>",
            "extra": {"returncode": 0, "timestamp": 3.0},
        },
    ]
    make_model(server).query(history, [BASH_TOOL])
    sent = server.chat_requests[0].body["messages"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "bash"
    assert sent[3] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "<returncode>0</returncode>",
    }


def test_retries_on_503_then_succeeds(server):
    server.script(Reply(content="finally", prompt_token_ids=[1, 2], output_token_ids=[3]))
    server.fail_next(2, status=503)
    resp = make_model(server, retries=3, capture_token_ids=True).query(MESSAGES, [BASH_TOOL])
    assert resp.content == "finally"
    assert resp.token_capture == {"prompt_token_ids": [1, 2], "output_token_ids": [3]}
    assert len(server.chat_requests) == 3  # no hidden litellm/SDK retries on top of ours


def test_persistent_503_raises_model_error_after_retries(server):
    server.fail_next(100, status=503)
    model = make_model(server, retries=2)
    with pytest.raises(ModelError) as ei:
        model.query(MESSAGES, [BASH_TOOL])
    err = ei.value
    assert err.attempts == 3 and err.transient and err.status_code == 503
    assert "openai/qwen3-test" in str(err) and server.base_url in str(err)
    assert len(server.chat_requests) == 3


def test_non_transient_error_is_not_retried(server):
    server.fail_next(100, status=400)
    with pytest.raises(ModelError) as ei:
        make_model(server, retries=3).query(MESSAGES, [BASH_TOOL])
    assert ei.value.attempts == 1 and not ei.value.transient and ei.value.status_code == 400
    assert len(server.chat_requests) == 1


def test_endpoint_down_raises_model_error_after_retries(server):
    server.go_down()
    model = make_model(server, retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(ModelError) as ei:
        model.query(MESSAGES, [BASH_TOOL])
    assert time.monotonic() - t0 < 30
    err = ei.value
    assert err.attempts == 3 and err.transient
    assert err.model == "openai/qwen3-test" and err.endpoint == server.base_url
    assert "openai/qwen3-test" in str(err) and server.base_url in str(err)
    assert server.chat_requests == []
    # and it recovers once the endpoint is back
    server.come_up()
    assert model.query(MESSAGES, [BASH_TOOL]).content == "ok"


def test_timeout_is_retried(server):
    server.script(Reply(content="slow", delay=0.6))
    with pytest.raises(ModelError) as ei:
        make_model(server, retries=1, timeout=0.2).query(MESSAGES, [BASH_TOOL])
    assert ei.value.attempts == 2 and ei.value.transient
    assert len(server.chat_requests) == 2


def test_api_key_sent_but_never_kept(server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script(
        Reply(content="ok", tool_calls=[LS_CALL], prompt_token_ids=[5], output_token_ids=[6])
    )
    model = make_model(server, api_key_env=KEY_ENV, capture_token_ids=True)
    model.check_credentials()
    resp = model.query(MESSAGES, [BASH_TOOL])

    assert server.chat_requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(model)
    assert SECRET not in json.dumps(model.describe())
    assert model.describe()["api_key_env"] == KEY_ENV
    assert SECRET not in repr(vars(model))
    assert SECRET not in repr(resp)
    assert SECRET not in json.dumps(dataclasses.asdict(resp))
    assert SECRET not in json.dumps(resp.to_message(timestamp=1.0))
    assert SECRET not in caplog.text


def test_api_key_not_in_error(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.fail_next(100, status=401)
    with pytest.raises(ModelError) as ei:
        make_model(server, api_key_env=KEY_ENV).query(MESSAGES, [BASH_TOOL])
    assert SECRET not in str(ei.value) and SECRET not in repr(ei.value)
    assert ei.value.status_code == 401 and ei.value.attempts == 1


def test_api_key_read_at_call_time(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "first-key")
    model = make_model(server, api_key_env=KEY_ENV)
    model.query(MESSAGES, [BASH_TOOL])
    monkeypatch.setenv(KEY_ENV, "rotated-key")
    model.query(MESSAGES, [BASH_TOOL])
    auth = [r.headers["Authorization"] for r in server.chat_requests]
    assert auth == ["Bearer first-key", "Bearer rotated-key"]


def test_missing_key_env_is_named(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    model = make_model(server, api_key_env=KEY_ENV)
    with pytest.raises(ModelCredentialsError, match=KEY_ENV):
        model.check_credentials()
    with pytest.raises(ModelCredentialsError, match=KEY_ENV):
        model.query(MESSAGES, [BASH_TOOL])
    assert server.chat_requests == []


def test_self_hosted_endpoint_gets_placeholder_not_ambient_openai_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-cloud-key")
    model = make_model(server)
    model.check_credentials()  # no key needed for a self-hosted endpoint
    model.query(MESSAGES, [BASH_TOOL])
    assert server.chat_requests[0].headers["Authorization"] == "Bearer EMPTY"


def test_cloud_model_without_key_names_provider_variable(monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    model = LiteLLMChatModel("gemini/gemini-3-pro-preview")
    with pytest.raises(ModelCredentialsError, match="GEMINI_API_KEY"):
        model.check_credentials()


def test_protocol_and_describe(server):
    model = make_model(server, capture_token_ids=True)
    assert isinstance(model, ChatModel)
    assert model.name == "openai/qwen3-test"
    d = model.describe()
    assert d["api_base"] == server.base_url and d["capture_token_ids"] is True
    json.dumps(d)


def test_to_message_shape():
    resp = ModelResponse(
        content="hi",
        tool_calls=[LS_CALL],
        token_capture={"prompt_token_ids": [1], "output_token_ids": [2, 3]},
        usage={"prompt_tokens": 1},
        cost=0.5,
        raw_model="m",
    )
    msg = resp.to_message(timestamp=12)
    assert msg["role"] == "assistant" and msg["content"] == "hi" and msg["tool_calls"] == [LS_CALL]
    assert msg["extra"]["timestamp"] == 12.0 and isinstance(msg["extra"]["timestamp"], float)
    assert msg["extra"]["token_capture"] == {"prompt_token_ids": [1], "output_token_ids": [2, 3]}
    bare = ModelResponse(content="x").to_message()
    assert "tool_calls" not in bare and "token_capture" not in bare["extra"]
    assert isinstance(bare["extra"]["timestamp"], float)
