"""coop_dag.probe: held-out first-turn cases, rendering as the runtime renders, scoring as the
agent loop and the metrics read a turn, and a real (tiny-qwen3) greedy run with and without an
adapter."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.actions import BASH_TOOL, to_qwen_xml  # noqa: E402
from coop_dag.chat import render_ids  # noqa: E402
from coop_dag.probe import (  # noqa: E402
    ProbeError,
    ProbeResult,
    compare_outputs,
    first_turn_messages,
    held_out_cases,
    probe_key,
    probe_student,
    prompt_ids,
    score_output,
)
from coop_dag.prompts import render_prompts  # noqa: E402
from coop_dag.students import get_student  # noqa: E402
from coop_dag.tasks import BUNDLED_SPLIT, discover_tasks  # noqa: E402


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


def test_prompt_is_the_runtime_turn_zero(tiny, cases):
    tok = tiny.load_tokenizer()
    case = cases[1]
    # what CoopAgent.run starts from: system + instance of the default coop prompt
    p = render_prompts(case.task, case.agent_id, case.partner_id, steering=False)
    runtime = [{"role": "system", "content": p.system}, {"role": "user", "content": p.instance}]
    assert first_turn_messages(case) == runtime
    ids = prompt_ids(tok, case)
    assert ids == render_ids(tok, runtime, [BASH_TOOL])
    text = tok.decode(ids)
    assert case.task.strip()[:40] in text and '"name": "bash"' in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "Plan-First" not in text  # no steering at inference


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


def test_probe_on_tiny_qwen3_with_and_without_an_adapter(tiny, cases, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    two = cases[:2]
    base = probe_student(tiny, cases=two, max_new_tokens=12)
    assert 0.0 <= base.rate <= 1.0 and base.n == 2 and len(base.outputs) == 2
    assert all(isinstance(o.text, str) and 0 < o.n_tokens <= 12 for o in base.outputs)
    assert base.summary()["n"] == 2 and "outputs" in base.as_dict()
    assert ProbeResult.from_dict(base.as_dict()) == base  # the asset caches base results
    key = probe_key(tiny, two, 12, 1)
    assert key == probe_key(tiny, two, 12, 1) and key != probe_key(tiny, two, 16, 1)
    again = probe_student(tiny, cases=two, max_new_tokens=12)
    assert again.texts() == base.texts()  # greedy: deterministic
    # an adapter with non-zero B changes the output
    torch.manual_seed(0)
    peft = get_peft_model(
        tiny.load_model(),
        LoraConfig(
            r=4,
            lora_alpha=64,
            target_modules="all-linear",
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    peft.save_pretrained(str(tmp_path / "adapter"))
    model = tiny.load_model()
    tuned = probe_student(tiny, tmp_path / "adapter", cases=two, max_new_tokens=12, model=model)
    assert tuned.adapter == str(tmp_path / "adapter")
    cmp = compare_outputs(base, tuned)
    assert cmp["differs"] and cmp["n_compared"] == 2
    # the caller's base model is given back without the adapter
    back = probe_student(tiny, cases=two, max_new_tokens=12, model=model)
    assert back.texts() == base.texts()
