"""coop_dag.agent.loop: the CoopAgent loop driven by a scripted model, for real — a bubblewrap
sandbox on a bundled task checkout and a real Redis-protocol server for messaging.

Paths covered here, one agent at a time (the two-agent choreography is in test_episode.py):
format errors (feedback, reset, three in a row → FormatError), step limit, context limit, a
hanging command, several tool calls in one turn, malformed / misaddressed / unanswered
`send_message`, a partner that has already exited, a model that raises.

`ScriptedModel` and its turn builders are shared with test_episode.py.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coop_dag import BUNDLED_DATASET
from coop_dag.agent.actions import SUBMIT_COMMAND, to_qwen_xml
from coop_dag.agent.loop import AgentLimits, CoopAgent, approx_tokens
from coop_dag.agent.messaging.bus import MessageBus, new_run_prefix
from coop_dag.agent.models import ChatModel, ModelResponse
from coop_dag.agent.prompts import render_prompts
from coop_dag.agent.redis_server import connect
from coop_dag.agent.sandbox.bwrap import bwrap_status
from coop_dag.agent.sandbox.local import LocalSandbox
from coop_dag.dataset.discovery import discover_pairs

BWRAP_OK, BWRAP_INFO = bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unusable: {BWRAP_INFO}")

# --------------------------------------------------------------------------- scripted model

Turn = ModelResponse | Callable[[list[dict]], ModelResponse] | BaseException


def capture_ids(tag: int) -> dict:
    """A recognisable token capture for turn `tag` (vLLM-shaped: two int lists)."""
    return {
        "prompt_token_ids": [151644, 8948, 198, tag, tag + 1],
        "output_token_ids": [9000 + tag, 9001 + tag, 151645],
    }


def call(
    command: str, thought: str = "", *, capture: int | None = None, n: int = 0
) -> ModelResponse:
    """A turn in OpenAI tool_calls form."""
    tc = {
        "id": f"call_{uuid.uuid4().hex[:8]}_{n}",
        "type": "function",
        "function": {"name": "bash", "arguments": json.dumps({"command": command})},
    }
    return ModelResponse(
        content=thought or None,
        tool_calls=[tc],
        token_capture=capture_ids(capture) if capture is not None else None,
        raw_model="scripted",
    )


def xml(command: str, thought: str = "", *, capture: int | None = None) -> ModelResponse:
    """A turn in Qwen3-Coder inline XML (what the student emits; no tool_calls)."""
    text = f"{thought}\n\n{to_qwen_xml(command)}" if thought else to_qwen_xml(command)
    return ModelResponse(
        content=text,
        token_capture=capture_ids(capture) if capture is not None else None,
        raw_model="scripted",
    )


def text(content: str, *, capture: int | None = None) -> ModelResponse:
    """A turn with no action at all (a format error)."""
    return ModelResponse(
        content=content,
        token_capture=capture_ids(capture) if capture is not None else None,
        raw_model="scripted",
    )


def submit(**kw: Any) -> ModelResponse:
    return call(SUBMIT_COMMAND, "Done, submitting.", **kw)


class ScriptedModel:
    """A ChatModel answering pre-written turns in order (the last one repeats when
    `repeat_last`). A turn is a ModelResponse, a callable `(messages) -> ModelResponse`
    (to block for choreography or inspect the prompt), or an exception to raise.
    Every prompt it is given is kept (deep copy) in `prompts`."""

    def __init__(self, turns: list[Turn], *, name: str = "scripted", repeat_last: bool = False):
        self.turns = list(turns)
        self.name = name
        self.repeat_last = repeat_last
        self.prompts: list[list[dict]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse:
        assert tools and tools[0]["function"]["name"] == "bash"
        with self._lock:
            i = len(self.prompts)
            self.prompts.append(copy.deepcopy(messages))
        if i >= len(self.turns):
            if not self.repeat_last:
                raise AssertionError(f"{self.name}: script exhausted at turn {i}")
            i = len(self.turns) - 1
        turn = self.turns[i]
        if isinstance(turn, BaseException):
            raise turn
        if callable(turn) and not isinstance(turn, ModelResponse):
            turn = turn(messages)
        return copy.deepcopy(turn)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Block until `predicate()`; a scripted turn's gate. Fails loudly instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


assert isinstance(ScriptedModel([]), ChatModel)

# --------------------------------------------------------------------------- helpers


def assistant_turns(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["role"] == "assistant"]


def observation_after(messages: list[dict], turn: dict) -> dict:
    """The message answering assistant `turn` (tool message, or user for inline XML)."""
    i = next(k for k, m in enumerate(messages) if m is turn)
    return messages[i + 1]


def obs_json(message: dict) -> dict:
    """The sandbox part of an observation, parsed (CooperBench's JSON-ish rendering)."""
    content = message["content"]
    return json.loads(content[content.index("{") :])


@pytest.fixture(scope="module")
def pair():
    pairs = {p.pair_id: p for p in discover_pairs(BUNDLED_DATASET)}
    return pairs["datehelp_task/106/f1_f3"]


@pytest.fixture
def client(redis_url):
    c = connect(redis_url)
    yield c
    c.close()


@pytest.fixture
def make_agent(pair, client, tmp_path):
    """Build a CoopAgent (agent1, partner agent2) over a real sandbox and bus."""
    made: list[LocalSandbox] = []
    prefix = new_run_prefix()

    def build(model: ChatModel, **limits: Any) -> CoopAgent:
        limits.setdefault("command_timeout", 10.0)
        limits.setdefault("wait_timeout", 2.0)
        sandbox = LocalSandbox(pair.task, tmp_path / "sbx", timeout=limits["command_timeout"])
        made.append(sandbox)
        feature = pair.features[0]
        return CoopAgent(
            agent_id="agent1",
            partner_id="agent2",
            model=model,
            sandbox=sandbox,
            bus=MessageBus(client, prefix, "agent1", agents=["agent1", "agent2"]),
            prompts=render_prompts(feature.description, "agent1", "agent2", steering=False),
            limits=AgentLimits(**limits),
        )

    build.partner = lambda: MessageBus(client, prefix, "agent2", agents=["agent1", "agent2"])
    yield build
    for sb in made:
        sb.close()


# --------------------------------------------------------------------------- format errors


@needs_bwrap
def test_three_format_errors_in_a_row_end_the_episode(make_agent):
    model = ScriptedModel(
        [
            text("I'll look around:\n```bash\nls -la\n```", capture=1),
            text('[Makes bash tool call with {"command": "ls"} as arguments]'),
            text("Let me think about the parser first."),
            call("touch never-run.txt"),
        ]
    )
    agent = make_agent(model)
    assert agent.run() == "FormatError"
    assert agent.steps == 3 and model.calls == 3
    turns = assistant_turns(agent.messages)
    assert len(turns) == 3
    # unparseable turns are still recorded, content and token ids intact
    assert turns[0]["content"].startswith("I'll look around:\n```bash")
    assert turns[0]["extra"]["token_capture"] == capture_ids(1)
    assert all(t["extra"]["actions"] == [] for t in turns)
    feedback = [m for m in agent.messages if m.get("extra", {}).get("format_error")]
    assert len(feedback) == 3 and all(m["role"] == "user" for m in feedback)
    assert "Format error" in feedback[0]["content"]
    assert "markdown code block is not a tool call" in feedback[0]["content"]
    assert "Describing a tool call in text does not make one" in feedback[1]["content"]
    assert "No tool calls found" in feedback[2]["content"]
    # each feedback message directly answers its turn, and the model saw it next time
    for t, fb in zip(turns, feedback, strict=True):
        assert observation_after(agent.messages, t) is fb
    assert model.prompts[1][-1]["content"] == feedback[0]["content"]
    assert agent.sandbox.diff() == ""  # nothing ever ran
    assert not (Path(agent.sandbox.workdir) / "never-run.txt").exists()


@needs_bwrap
def test_a_valid_turn_resets_the_format_error_count(make_agent):
    md = text("```bash\ngit status\n```")
    model = ScriptedModel([md, md, call("true"), md, md, submit()])
    agent = make_agent(model)
    assert agent.run() == "Submitted"
    assert agent.steps == 6
    assert sum(1 for m in agent.messages if m.get("extra", {}).get("format_error")) == 4


# --------------------------------------------------------------------------- limits


@needs_bwrap
def test_step_limit_ends_with_limits_exceeded(make_agent):
    model = ScriptedModel([call("true")], repeat_last=True)
    agent = make_agent(model, max_steps=3)
    assert agent.run() == "LimitsExceeded"
    assert agent.steps == 3 and model.calls == 3  # no 4th query
    tools = [m for m in agent.messages if m["role"] == "tool"]
    assert len(tools) == 3 and all(m["extra"]["returncode"] == 0 for m in tools)
    assert agent.trajectory()["status"] == "LimitsExceeded"


@needs_bwrap
def test_context_limit_ends_with_context_window_exceeded(make_agent, pair):
    start = approx_tokens(
        [
            {"role": "system", "content": "x"},
            {"role": "user", "content": pair.features[0].description},
        ]
    )
    model = ScriptedModel([call("seq 1 3000")], repeat_last=True)  # ~14 KB of output
    agent = make_agent(model, max_steps=10, max_context_tokens=start + 2000)
    assert agent.run() == "ContextWindowExceeded"
    assert agent.steps == 1 and model.calls == 1  # the over-long prompt was never sent
    assert approx_tokens(agent.messages) > start + 2000
    # the observation was recorded head + tail, as CooperBench's template does
    assert obs_json(agent.messages[-1])["warning"] == "Output too long."


# --------------------------------------------------------------------------- commands


@needs_bwrap
def test_hanging_command_is_killed_at_the_timeout(make_agent):
    model = ScriptedModel([call("echo started; sleep 30"), submit()])
    agent = make_agent(model, command_timeout=1.0)
    t0 = time.monotonic()
    assert agent.run() == "Submitted"
    assert time.monotonic() - t0 < 10
    obs = observation_after(agent.messages, assistant_turns(agent.messages)[0])
    assert obs["role"] == "tool" and obs["extra"]["returncode"] == -1
    body = obs_json(obs)
    assert body["returncode"] == -1
    assert body["output"].startswith("started\n")
    assert "timed out after 1 seconds" in body["output"]


@needs_bwrap
def test_several_tool_calls_in_one_turn_are_each_answered(make_agent):
    two = call("echo one")
    two.tool_calls.append(call("echo two && false", n=1).tool_calls[0])
    model = ScriptedModel([two, submit()])
    agent = make_agent(model)
    assert agent.run() == "Submitted"
    turn = assistant_turns(agent.messages)[0]
    i = agent.messages.index(turn)
    answers = agent.messages[i + 1 : i + 3]
    assert [m["tool_call_id"] for m in answers] == [tc["id"] for tc in two.tool_calls]
    assert [obs_json(m)["output"] for m in answers] == ["one\n", "two\n"]
    assert [m["extra"]["returncode"] for m in answers] == [0, 1]


@needs_bwrap
def test_an_invalid_tool_call_next_to_a_valid_one_does_not_steal_its_answer(make_agent):
    turn = call("echo ran")
    bad = {
        "id": "call_bad",
        "type": "function",
        "function": {"name": "str_replace_editor", "arguments": "{}"},
    }
    turn.tool_calls.insert(0, bad)
    model = ScriptedModel([turn, submit()])
    agent = make_agent(model)
    assert agent.run() == "Submitted"
    recorded = assistant_turns(agent.messages)[0]
    answers = [m for m in agent.messages if m.get("role") == "tool"]
    ran = next(m for m in answers if "ran" in m["content"])
    assert ran["tool_call_id"] == turn.tool_calls[1]["id"]  # the bash call's own id
    assert recorded["extra"]["actions"] == ["echo ran"]


@needs_bwrap
def test_malformed_send_message_runs_nothing_and_says_why(make_agent):
    model = ScriptedModel(
        [
            call("touch made.txt && send_message agent2 'hi' | cat"),
            call("send_message agent9 <<'MSG'\nhello?\nMSG"),
            submit(),
        ]
    )
    agent = make_agent(model)
    partner = make_agent.partner()
    assert agent.run() == "Submitted"
    first, second = (
        observation_after(agent.messages, t) for t in assistant_turns(agent.messages)[:2]
    )
    assert first["extra"]["returncode"] == 2 and "pipeline" in first["content"]
    assert not (Path(agent.sandbox.workdir) / "made.txt").exists()
    assert second["extra"]["returncode"] == 1
    assert "unknown recipient 'agent9'" in second["content"]
    assert partner.receive() == [] and agent.bus.sent_messages() == []


@needs_bwrap
def test_wait_without_a_reply_times_out(make_agent):
    model = ScriptedModel(
        [call("send_message --wait agent2 <<'MSG'\nPlan: I take parsing.py.\nMSG"), submit()]
    )
    agent = make_agent(model, wait_timeout=0.5)
    partner = make_agent.partner()
    partner.mark_alive()
    t0 = time.monotonic()
    assert agent.run() == "Submitted"
    assert 0.5 <= time.monotonic() - t0 < 8
    obs = observation_after(agent.messages, assistant_turns(agent.messages)[0])
    assert obs["content"] == "Message sent to agent2.\nNo reply from agent2 within 0.5s."
    assert obs["extra"]["returncode"] == 0
    [msg] = partner.receive()
    assert msg["content"] == "Plan: I take parsing.py." and isinstance(msg["timestamp"], float)
    # the agent announced itself and its exit through Redis
    assert partner.partner_exited("agent1")


@needs_bwrap
def test_partner_already_gone(make_agent):
    model = ScriptedModel([call("send_message agent2 'are you there?'"), call("true"), submit()])
    agent = make_agent(model)
    make_agent.partner().mark_exited()
    assert agent.run() == "Submitted"
    notices = [m for m in agent.messages if m.get("extra", {}).get("notice") == "partner_exited"]
    assert len(notices) == 1 and notices[0]["content"].startswith("[Notice]: agent2 has finished")
    assert model.prompts[0][-1] == notices[0]  # delivered before the very first model call
    obs = observation_after(agent.messages, assistant_turns(agent.messages)[0])
    assert obs["extra"]["returncode"] == 1
    assert "agent2 has exited and can no longer receive messages" in obs["content"]


@needs_bwrap
def test_model_error_is_recorded_not_raised(make_agent):
    model = ScriptedModel([call("true"), RuntimeError("endpoint exploded")])
    agent = make_agent(model)
    assert agent.run() == "Error"
    assert agent.error == "RuntimeError: endpoint exploded" and agent.steps == 1
    traj = agent.trajectory(repo="r", task_id=1, feature_id=1, model="m")
    assert traj["status"] == "Error" and traj["error"] == agent.error
    assert make_agent.partner().partner_exited("agent1")
