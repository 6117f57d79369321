"""serving.probe: validation first-turn cases, the request the runtime sends, scoring as the
agent loop and the metrics read a turn (inline calls and vLLM's parsed tool calls), and a real
greedy run on the session's vLLM (tiny-qwen3) with and without an adapter."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.agent.actions import BASH_TOOL, to_qwen_xml  # noqa: E402
from coop_dag.agent.prompts import render_prompts  # noqa: E402
from coop_dag.dataset.discovery import discover_tasks  # noqa: E402
from coop_dag.dataset.tasks import BUNDLED_SPLIT
from coop_dag.serving.probe import (  # noqa: E402
    ProbeError,
    ProbeResult,
    case_probe,
    compare_outputs,
    first_turn_messages,
    held_out_cases,
    probe_endpoint,
    probe_key,
    score_output,
)
from coop_dag.training.students import get_student  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return get_student("tiny-qwen3")


@pytest.fixture(scope="module")
def cases():
    return held_out_cases()


def test_held_out_cases(cases):
    """By default the probe reads the bundled *validation* repositories, never the test ones."""
    n_features = sum(
        len(t.features) for t in discover_tasks(BUNDLED_DATASET, repos=BUNDLED_SPLIT.validation)
    )
    assert len(cases) == 8
    assert {c.repo for c in cases} == set(BUNDLED_SPLIT.validation)
    assert not {c.repo for c in cases} & set(BUNDLED_SPLIT.test)
    # agents alternate; a feature asked again (fewer features than prompts) is the other agent
    assert [c.agent_id for c in cases[: min(8, n_features)]] == ["agent1", "agent2"] * (
        min(8, n_features) // 2
    )
    assert len({c.key for c in cases}) == 8
    assert all(c.partner_id != c.agent_id and c.files for c in cases)
    assert len({(c.repo, c.feature_id) for c in cases}) == min(8, n_features)
    everything = held_out_cases(max_prompts=0)
    assert len(everything) == n_features
    more = held_out_cases(max_prompts=16)
    assert {(c.key) for c in more} >= {c.key for c in cases}
    assert len({c.key for c in more}) == min(16, 2 * n_features)  # each feature, each agent
    with pytest.raises(ProbeError):
        held_out_cases(BUNDLED_DATASET, [])


def test_prompt_is_the_runtime_turn_zero(cases):
    case = cases[1]
    # what CoopAgent.run starts from: system + instance of the default coop prompt
    p = render_prompts(case.task, case.agent_id, case.partner_id, steering=False)
    runtime = [{"role": "system", "content": p.system}, {"role": "user", "content": p.instance}]
    assert first_turn_messages(case) == runtime
    body = case_probe(case, 64).body("m")
    assert body["messages"] == runtime and body["tools"] == [BASH_TOOL]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 64
    assert "Plan-First" not in str(body)  # no steering at inference


def test_score_output(cases):
    case = cases[0]  # agent1 -> agent2
    path = case.files[0]
    plan = f"send_message --wait agent2 <<'MSG'\nPlan: I'll edit `{path}`, you take yours.\nMSG"
    hit = score_output("Let me coordinate first.\n" + to_qwen_xml(plan), case)
    assert hit.hit and hit.send and hit.tool_call and hit.paths == [path]
    assert hit.messages == [{"to": "agent2", "content": plan.split("\n")[1], "wait": True}]
    wrong_to = score_output(to_qwen_xml(plan.replace("agent2", "agent7")), case)
    assert wrong_to.send and not wrong_to.hit
    no_path = score_output(to_qwen_xml("send_message agent2 'I will plan the split.'"), case)
    assert no_path.send and not no_path.hit
    other = score_output(to_qwen_xml("send_message agent2 'I take src/other/thing.py'"), case)
    assert other.send and not other.hit and other.paths == []
    markdown = score_output(f"```bash\n{plan}\n```", case)
    assert not markdown.tool_call and not markdown.send and not markdown.hit
    bash_first = score_output(to_qwen_xml(f"cat {path}"), case)
    assert bash_first.tool_call and not bash_first.send
    broken = score_output(to_qwen_xml("send_message agent2 <<'MSG'\nno end"), case)
    assert not broken.send and broken.error
    # vLLM's parser hands the call over in tool_calls; an empty-arguments call is no action
    args = json.dumps({"command": plan})
    parsed = {"type": "function", "function": {"name": "bash", "arguments": args}}
    via = score_output("Let me coordinate first.", case, tool_calls=[parsed])
    assert via.hit and via.paths == [path]
    empty = {"type": "function", "function": {"name": "bash", "arguments": "{}"}}
    assert not score_output("text", case, tool_calls=[empty]).tool_call


def test_probe_on_vllm_with_and_without_an_adapter(vllm_server, cases, tmp_path):
    import serve_helpers as H

    from coop_dag.serving.swap import ensure_loaded
    from coop_dag.training.adapters import adapter_name

    two = cases[:2]
    base = probe_endpoint(vllm_server.engine, vllm_server.base_model_id, two, max_new_tokens=12)
    assert 0.0 <= base.rate <= 1.0 and base.n == 2 and len(base.outputs) == 2
    assert all(isinstance(o.text, str) and 0 < o.n_tokens <= 12 for o in base.outputs)
    assert base.summary()["n"] == 2 and "outputs" in base.as_dict()
    assert ProbeResult.from_dict(base.as_dict()) == base  # the asset caches base results
    tiny = get_student("tiny-qwen3")
    key = probe_key(tiny, two, 12, "engine-a")
    assert key == probe_key(tiny, two, 12, "engine-a")
    assert key != probe_key(tiny, two, 16, "engine-a")
    assert key != probe_key(tiny, two, 12, "engine-b")  # another server, another cache entry
    again = probe_endpoint(vllm_server.engine, vllm_server.base_model_id, two, max_new_tokens=12)
    assert again.texts() == base.texts()  # greedy: deterministic
    # an adapter with non-zero B changes the output
    adapter = H.adapters()["A"]
    name = adapter_name(adapter)
    ensure_loaded(vllm_server.url, name, adapter)
    try:
        tuned = probe_endpoint(vllm_server.engine, name, two, max_new_tokens=12, adapter=adapter)
    finally:
        vllm_server.engine.unload_adapter(name)
    assert tuned.adapter == adapter and tuned.model == name
    cmp = compare_outputs(base, tuned)
    assert cmp["differs"] and cmp["n_compared"] == 2
