"""coop_dag.metrics: the seed's plan_first / plan_content / follow_through on hand-built runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from coop_dag.actions import to_qwen_xml
from coop_dag.metrics import (
    MISSING_TURNS,
    eval_outcome,
    main_score,
    plan_keywords,
    referenced_files,
    score_pairs,
    score_run,
    wilson_interval,
)
from coop_dag.runlogs import RunLogError, iter_pairs

A_FILE, B_FILE = "src/pkg/a.py", "src/pkg/b.py"
PLAN = f"Plan: I'll take {A_FILE}, you take {B_FILE}. First step for me: add the flag."
ACK = f"Agreed: you do {A_FILE} and I'll do {B_FILE}."

# -- builders ----------------------------------------------------------------------------------


def tool_turn(*commands: str, content: str = "") -> dict:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"command": c})},
            }
            for i, c in enumerate(commands)
        ],
        "extra": {"timestamp": 1.0},
    }


def xml_turn(*commands: str) -> dict:
    text = "I should coordinate before editing.\n" + "\n".join(to_qwen_xml(c) for c in commands)
    return {"role": "assistant", "content": text, "extra": {"timestamp": 1.0}}


def text_turn(content: str) -> dict:
    return {"role": "assistant", "content": content, "extra": {"timestamp": 1.0}}


def obs(text: str = "", call_id: str | None = "call_0") -> dict:
    if call_id is None:  # inline-XML action: the observation is a user message
        return {"role": "user", "content": text, "extra": {"returncode": 0, "timestamp": 2.0}}
    return {"role": "tool", "tool_call_id": call_id, "content": text, "extra": {"returncode": 0}}


def inbox(sender: str, text: str) -> dict:
    return {
        "role": "user",
        "content": f"[Message from {sender}]: {text}",
        "extra": {"timestamp": 2.0},
    }


def traj(fid: int, messages: list[dict], agent_id: str | None = None) -> dict:
    return {
        "repo": "demo_task",
        "task_id": 1,
        "feature_id": fid,
        "agent_id": agent_id or f"agent{fid}",
        "model": "test",
        "status": "Submitted",
        "cost": 0.0,
        "steps": sum(m["role"] == "assistant" for m in messages),
        "prompt": "default",
        "messages": [
            {"role": "system", "content": "You are a coop agent."},
            {"role": "user", "content": f"Implement the feature in {A_FILE}."},
            *messages,
        ],
    }


def write_pair(run: Path, trajs: dict, repo="demo_task", task="1", eval_json=None) -> Path:
    a, b = sorted(trajs)
    d = run / "coop" / repo / task / f"f{a}_f{b}"
    d.mkdir(parents=True, exist_ok=True)
    for fid, t in trajs.items():
        if t is not None:
            (d / f"agent{fid}_traj.json").write_text(t if isinstance(t, str) else json.dumps(t))
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    return d


def proposer(turn=tool_turn, observe=obs) -> list[dict]:
    """agent1: sends the plan with --wait, gets the reply in the observation, edits its file."""
    return [
        turn(f'send_message --wait agent2 "{PLAN}"'),
        observe(f"Message sent to agent2.\n[Message from agent2]: {ACK}"),
        turn(f"sed -i 's/old/new/' {A_FILE}"),
        observe(""),
    ]


def responder(turn=tool_turn, observe=obs) -> list[dict]:
    """agent2: the plan arrives before its first action; it acks, then edits its file."""
    return [
        inbox("agent1", PLAN),
        turn(f'send_message agent1 "{ACK}"'),
        observe("Message sent to agent1."),
        turn(f"cat {B_FILE}"),
        observe("..."),
    ]


def score_one(tmp_path: Path, t1, t2) -> dict:
    write_pair(tmp_path, {1: t1, 2: t2})
    result = score_run(tmp_path)
    assert result["summary"]["n_pairs"] == 1
    return result["per_pair"][0]


def outcome(row: dict) -> tuple:
    return row["plan_first"], row["plan_content"], row["follow_through"]


# -- the three metrics, by surface form ---------------------------------------------------------


def test_send_message_only_in_tool_calls_arguments(tmp_path):
    row = score_one(tmp_path, traj(1, proposer()), traj(2, responder()))
    assert outcome(row) == (True, True, {"agent1": True, "agent2": True})
    assert row["plan_files"] == [A_FILE, B_FILE]
    assert row["reason"] is None and row["reasons"] == []
    assert row["agents"]["agent1"]["first_message"] == {"to": "agent2", "body": PLAN, "wait": True}
    assert row["agents"]["agent1"]["plan_keywords"] == ["plan", "I'll", "you", "first", "step"]
    assert row["agents"]["agent2"]["follow_through_command"] == f"cat {B_FILE}"


def test_send_message_only_in_content_xml(tmp_path):
    xml_obs = lambda text="": obs(text, call_id=None)  # noqa: E731
    t1 = traj(1, proposer(xml_turn, xml_obs))
    t2 = traj(2, responder(xml_turn, xml_obs))
    assert all("tool_calls" not in m for m in t1["messages"] + t2["messages"])
    row = score_one(tmp_path, t1, t2)
    assert outcome(row) == (True, True, {"agent1": True, "agent2": True})


def test_runtime_recorded_actions(tmp_path):
    def runtime(command):
        return {
            "role": "assistant",
            "content": "",
            "extra": {"timestamp": 1.0, "actions": [command]},
        }

    row = score_one(tmp_path, traj(1, proposer(runtime)), traj(2, responder(runtime)))
    assert outcome(row) == (True, True, {"agent1": True, "agent2": True})


def test_markdown_bash_blocks_are_not_actions(tmp_path):
    md = [
        text_turn(f'```bash\nsend_message --wait agent2 "{PLAN}"\n```'),
        {"role": "user", "content": "No tool calls found in the response.", "extra": {}},
        text_turn(f"```bash\nsed -i 's/old/new/' {A_FILE}\n```"),
    ]
    row = score_one(tmp_path, traj(1, md), traj(2, responder()))
    # agent2 acked with file paths and edited its own file: it follows through on its own
    assert outcome(row) == (False, False, {"agent1": False, "agent2": True})
    assert row["reason"] == "agent1: no actions"
    assert row["agents"]["agent1"]["n_assistant_turns"] == 2
    assert row["agents"]["agent1"]["n_actions"] == 0
    # agent2's own ack still names files, but agent1 never sent a plan
    assert row["plan_files"] == [A_FILE, B_FILE]


def test_narration_without_a_call_is_not_an_action(tmp_path):
    narration = [
        text_turn(f"I will send my plan to agent2: {PLAN}"),
        text_turn('[Makes bash tool call with {"command": "send_message agent2 hi"} as arguments]'),
    ]
    row = score_one(tmp_path, traj(1, narration), traj(2, responder()))
    assert outcome(row) == (False, False, {"agent1": False, "agent2": True})
    assert row["reason"] == "agent1: no actions"
    assert row["agents"]["agent1"]["n_actions"] == 0


@pytest.mark.parametrize(
    "command",
    [
        f"send_message --wait agent2 <<'MSG'\n{PLAN}\nMSG",
        f'send_message --wait agent2 "{PLAN}"',
        "send_message --wait agent2 '" + PLAN.replace("I'll", "I\u2019ll") + "'",
    ],
    ids=["heredoc", "double-quoted", "single-quoted"],
)
def test_heredoc_and_quoted_forms(tmp_path, command):
    t1 = traj(
        1, [tool_turn(command), obs(f"[Message from agent2]: {ACK}"), tool_turn(f"vi {A_FILE}")]
    )
    row = score_one(tmp_path, t1, traj(2, responder()))
    assert outcome(row) == (True, True, {"agent1": True, "agent2": True})
    body = row["agents"]["agent1"]["first_message"]["body"]
    assert body.replace("\u2019", "'") == PLAN
    assert row["agents"]["agent1"]["plan_keywords"] == ["plan", "I'll", "you", "first", "step"]


# -- plan_first: what counts as received, and when ------------------------------------------------


def test_wait_reply_counts_as_received(tmp_path):
    row = score_one(tmp_path, traj(1, proposer()), traj(2, responder()))
    assert row["agents"]["agent1"]["received_before_first_bash"] == 1
    assert row["plan_first"] is True


def test_bash_before_any_reply_fails_plan_first(tmp_path):
    t1 = [
        tool_turn(f'send_message agent2 "{PLAN}"'),
        obs("Message sent to agent2."),
        tool_turn(f"cat {A_FILE}"),
        obs("..."),
        inbox("agent2", ACK),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert outcome(row) == (False, True, {"agent1": True, "agent2": True})
    assert row["reason"] == f"agent1: ran bash before receiving a message from agent2: cat {A_FILE}"


def test_bash_in_the_same_turn_as_the_wait_does_not_see_the_reply(tmp_path):
    t1 = [
        tool_turn(f'send_message --wait agent2 "{PLAN}"', "ls -la"),
        obs(f"[Message from agent2]: {ACK}", "call_0"),
        obs("listing", "call_1"),
        tool_turn(f"vi {A_FILE}"),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert row["plan_first"] is False
    assert row["reason"] == "agent1: ran bash before receiving a message from agent2: ls -la"
    assert row["follow_through"] == {"agent1": True, "agent2": True}


def test_responder_partner_message_before_first_action_counts(tmp_path):
    # agent2 never waits: the only message it receives is the inbox before its first turn
    row = score_one(tmp_path, traj(1, proposer()), traj(2, responder()))
    assert row["agents"]["agent2"]["received_before_first_bash"] == 1
    assert row["agents"]["agent2"]["plan_first"] is True


def test_first_action_bash_fails_plan_first(tmp_path):
    t1 = [
        tool_turn("ls -la"),
        obs("..."),
        tool_turn(f'send_message --wait agent2 "{PLAN}"'),
        obs(f"[Message from agent2]: {ACK}"),
        tool_turn(f"vi {A_FILE}"),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert outcome(row) == (False, True, {"agent1": True, "agent2": True})
    assert row["reason"] == "agent1: first action is bash, not send_message: ls -la"


def test_never_receiving_fails_plan_first(tmp_path):
    lonely = [tool_turn(f'send_message agent1 "{ACK}"'), obs("Message sent to agent1.")]
    row = score_one(tmp_path, traj(1, proposer()), traj(2, lonely))
    assert row["plan_first"] is False
    assert "agent2: never received a message from agent1" in row["reasons"]


def test_missing_assistant_turns_scores_zero(tmp_path):
    row = score_one(tmp_path, traj(1, proposer()), traj(2, []))
    assert outcome(row) == (False, False, {"agent1": False, "agent2": False})
    assert row["reason"] == MISSING_TURNS
    assert row["reasons"] == [f"agent2: {MISSING_TURNS}"]
    result = score_run(tmp_path)
    s = result["summary"]
    assert (
        s["n_plan_first"],
        s["n_plan_content"],
        s["n_follow_through_agents"],
        s["n_agents"],
    ) == (
        0,
        0,
        0,
        2,
    )


def test_missing_trajectory_file_scores_zero(tmp_path):
    write_pair(tmp_path, {1: traj(1, proposer()), 2: None})
    (row,) = score_run(tmp_path)["per_pair"]
    assert row["reason"] == MISSING_TURNS
    assert row["follow_through"] == {"agent1": False, "agent2": False}


# -- plan_content -----------------------------------------------------------------------------


def test_plan_keywords_are_whole_words_case_insensitive():
    assert plan_keywords("PLANNING the Splitter; stepping firstly") == []
    assert plan_keywords("My Plan: YOU first") == ["plan", "you", "first"]
    assert plan_keywords("I\u2019ll do it, then i'll test") == ["I'll"]
    assert plan_keywords("step by step, step") == ["step"]


def test_plan_content_needs_two_keywords_and_a_path(tmp_path):
    def agent1_says(body):
        return traj(
            1,
            [
                tool_turn(f'send_message --wait agent2 "{body}"'),
                obs(f"[Message from agent2]: {ACK}"),
            ],
        )

    one_keyword = score_one(
        tmp_path / "a", agent1_says(f"Taking {A_FILE} now."), traj(2, responder())
    )
    assert one_keyword["plan_content"] is False
    assert one_keyword["reason"] == "agent1: first message has fewer than 2 plan keywords"
    no_path = score_one(
        tmp_path / "b", agent1_says("Plan: I'll take the CLI, you the docs."), traj(2, responder())
    )
    assert no_path["plan_content"] is False
    assert no_path["reason"] == "agent1: first message names no file path"


def test_plan_content_uses_the_first_send_message_only(tmp_path):
    t1 = [
        tool_turn('send_message --wait agent2 "hello"'),
        obs(f"[Message from agent2]: {ACK}"),
        tool_turn(f'send_message agent2 "{PLAN}"'),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert row["plan_content"] is False
    assert row["agents"]["agent1"]["first_message"]["body"] == "hello"


# -- follow_through -----------------------------------------------------------------------------


def test_follow_through_on_the_partners_file_counts(tmp_path):
    t1 = [
        tool_turn(f'send_message --wait agent2 "Plan: I\'ll take {A_FILE}, you the rest."'),
        obs(f"[Message from agent2]: OK, I'll do {B_FILE} first."),
        tool_turn(f"grep -n flag {B_FILE}"),
    ]
    t2 = [
        inbox("agent1", f"Plan: I'll take {A_FILE}, you the rest."),
        tool_turn(f'send_message agent1 "OK, I\'ll do {B_FILE} first."'),
        tool_turn("python -m pytest -q"),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, t2))
    assert row["plan_files"] == [A_FILE, B_FILE]
    assert row["follow_through"] == {"agent1": True, "agent2": False}
    assert row["n_follow_through"] == 1
    assert "agent2: no later bash command references a plan file" in row["reasons"]


def test_follow_through_only_counts_bash_after_the_first_send(tmp_path):
    t1 = [
        tool_turn(f"cat {A_FILE}"),  # before the plan: not following it
        tool_turn(f'send_message --wait agent2 "{PLAN}" && vi {A_FILE}'),  # same action as the plan
        obs(f"[Message from agent2]: {ACK}"),
        tool_turn('send_message agent2 "still on it"'),  # later, but only a message
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert row["follow_through"] == {"agent1": False, "agent2": True}


def test_follow_through_counts_a_later_send_commands_remainder(tmp_path):
    t1 = [
        tool_turn(f'send_message --wait agent2 "{PLAN}"'),
        obs(f"[Message from agent2]: {ACK}"),
        tool_turn(f'send_message agent2 "starting" && sed -i s/a/b/ /workspace/repo/{A_FILE}'),
    ]
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert row["follow_through"]["agent1"] is True


def test_referenced_files_matching():
    files = [A_FILE, B_FILE]
    assert referenced_files(f"cat ./{A_FILE}", files) == [A_FILE]
    assert referenced_files(f"cat /workspace/repo/{B_FILE}", files) == [B_FILE]
    assert referenced_files(f"cd repo && git diff {A_FILE} {B_FILE}", files) == files
    assert referenced_files("cat src/pkg/a.pyc src/pkg/ab.py xsrc/pkg/a.py", files) == []
    assert referenced_files("cd src/pkg && cat a.py", files) == []


# -- whole runs -------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(3, 4)
    assert lo == pytest.approx(0.30064, abs=1e-5) and hi == pytest.approx(0.95441, abs=1e-5)
    lo, hi = wilson_interval(2, 2)
    assert lo == pytest.approx(0.34237, abs=1e-5) and hi == 1.0
    lo, hi = wilson_interval(0, 2)
    assert lo == 0.0 and hi == pytest.approx(0.65763, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(7, 10, z=1.0)
    assert lo == pytest.approx(0.54246, abs=1e-5) and hi == pytest.approx(0.82118, abs=1e-5)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_malformed_trajectory_reported_and_other_pairs_still_score(tmp_path):
    bad = write_pair(tmp_path, {1: '{"messages": [oops', 2: traj(2, responder())}, task="1")
    write_pair(tmp_path, {1: traj(1, proposer()), 2: traj(2, responder())}, task="2")
    result = score_run(tmp_path)
    s = result["summary"]
    assert (s["n_pairs"], s["n_plan_first"], s["n_plan_content"]) == (2, 1, 1)
    assert (s["n_follow_through_agents"], s["n_agents"]) == (2, 4)
    assert (s["plan_first_rate"], s["plan_content_rate"], s["follow_through_rate"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert s["n_errors"] == 1
    (err,) = result["errors"]
    assert str(bad / "agent1_traj.json") in err and "malformed JSON" in err
    by_id = {r["pair_id"]: r for r in result["per_pair"]}
    assert by_id["demo_task/1/f1_f2"]["reason"] == MISSING_TURNS
    assert by_id["demo_task/1/f1_f2"]["errors"] == [err]
    assert by_id["demo_task/2/f1_f2"]["plan_first"] is True
    assert set(result["per_task"]) == {"demo_task/1", "demo_task/2"}
    assert result["per_task"]["demo_task/2"]["plan_first_rate"] == 1.0


def test_summary_shape_rates_and_intervals(tmp_path):
    good = {1: traj(1, proposer()), 2: traj(2, responder())}
    bash_first = {1: traj(1, [tool_turn("ls")] + proposer()), 2: traj(2, responder())}
    for task, trajs in (("1", good), ("2", good), ("3", good), ("4", bash_first)):
        write_pair(tmp_path, trajs, repo="r_task", task=task)
    write_pair(tmp_path, good, repo="s_task", task="1")
    s = score_run(tmp_path)["summary"]
    assert s["n_pairs"] == 5 and s["n_plan_first"] == 4 and s["plan_first_rate"] == 0.8
    assert s["plan_content_rate"] == 1.0 and s["follow_through_rate"] == 1.0
    lo, hi = wilson_interval(4, 5)
    assert s["plan_first_ci95"] == [lo, hi]
    assert s["follow_through_ci95"] == list(wilson_interval(10, 10))
    assert s["both_passed_rate"] is None and s["merge_clean_rate"] is None and s["n_evaluated"] == 0
    per_task = score_run(tmp_path)["per_task"]
    assert list(per_task) == ["r_task/1", "r_task/2", "r_task/3", "r_task/4", "s_task/1"]
    assert per_task["r_task/4"]["n_plan_first"] == 0


def test_cooperbench_success_rates_from_eval_json(tmp_path):
    good = {1: traj(1, proposer()), 2: traj(2, responder())}
    evals = {
        "1": {"merge": {"status": "clean"}, "both_passed": True, "error": None},
        "2": {
            "merge": {"status": "conflicts"},
            "both_passed": False,
            "error": "Both naive and union merge strategies failed",
        },
        "3": {"merge": {"status": "error"}, "both_passed": False, "error": "branch setup failed"},
        "4": {"merged": {"merge_conflict": False}, "overall_success": False},
    }
    for task, ev in evals.items():
        write_pair(tmp_path, good, task=task, eval_json=ev)
    write_pair(tmp_path, good, task="5")  # not evaluated
    s = score_run(tmp_path)["summary"]
    assert (s["n_evaluated"], s["n_both_passed"], s["both_passed_rate"]) == (3, 1, 1 / 3)
    assert (s["n_merge_evaluated"], s["n_merge_clean"], s["merge_clean_rate"]) == (3, 2, 2 / 3)
    assert s["both_passed_ci95"] == list(wilson_interval(1, 3))
    assert s["n_eval_errors"] == 2
    assert eval_outcome(None) is None
    assert eval_outcome({"merge": {"status": "identical"}, "both_passed": True}) == {
        "both_passed": True,
        "merge_clean": True,
        "error": None,
    }


def test_cooperbench_internal_agent_ids(tmp_path):
    """CooperBench (and our episode runner) name agents agent1/agent2 by position, while files
    are agent<fid>: pair f2_f3 has agent2_traj.json (agent_id agent1) and agent3_traj.json
    (agent_id agent2). Messages are addressed by the internal names."""
    plan = PLAN
    t_first = [
        tool_turn(f'send_message --wait agent2 "{plan}"'),
        obs(f"[Message from agent2]: {ACK}"),
        tool_turn(f"vi {A_FILE}"),
    ]
    t_second = [
        inbox("agent1", plan),
        tool_turn(f'send_message agent1 "{ACK}"'),
        tool_turn(f"vi {B_FILE}"),
    ]
    write_pair(tmp_path, {2: traj(2, t_first, "agent1"), 3: traj(3, t_second, "agent2")})
    (row,) = score_run(tmp_path)["per_pair"]
    assert row["pair_id"] == "demo_task/1/f2_f3"
    assert outcome(row) == (True, True, {"agent2": True, "agent3": True})


def test_score_pairs_in_memory(tmp_path):
    write_pair(tmp_path, {1: traj(1, proposer()), 2: traj(2, responder())})
    pairs = list(iter_pairs(tmp_path))
    result = score_pairs(pairs)
    assert set(result) == {"summary", "per_pair", "per_task", "errors"}
    assert result["summary"]["plan_first_rate"] == 1.0


def test_non_cooperbench_dir_raises(tmp_path):
    (tmp_path / "traj.json").write_text("{}")
    with pytest.raises(RunLogError, match=str(tmp_path)):
        score_run(tmp_path)


def test_main_score_prints_summary_and_writes_full_json(tmp_path):
    write_pair(tmp_path / "run", {1: traj(1, proposer()), 2: traj(2, [])})
    out = tmp_path / "reports" / "metrics.json"
    buf = io.StringIO()
    result = main_score(tmp_path / "run", out=out, stream=buf)
    printed = json.loads(buf.getvalue())
    assert printed == result["summary"]
    assert printed["n_pairs"] == 1 and printed["plan_first_rate"] == 0.0
    full = json.loads(out.read_text())
    assert full["per_pair"][0]["pair_id"] == "demo_task/1/f1_f2"
    assert full["per_pair"][0]["reason"] == MISSING_TURNS
    assert set(full) == {"summary", "per_pair", "per_task", "errors", "run_dir"}


def test_malformed_send_message_is_neither_a_message_nor_bash(tmp_path):
    t1 = [
        tool_turn("send_message --wait agent2 'unterminated plan for src/pkg/a.py"),
        obs("Error: send_message: unterminated quote; message not sent"),
    ] + proposer()
    row = score_one(tmp_path, traj(1, t1), traj(2, responder()))
    assert row["plan_first"] is False
    assert row["reason"].startswith("agent1: first action is malformed send_message (")
    # the well-formed plan that follows is the first message actually sent
    assert row["agents"]["agent1"]["first_message"]["body"] == PLAN
    assert row["plan_content"] is True


def test_wilson_interval_ends_are_exact():
    assert wilson_interval(6, 6)[1] == 1.0 and wilson_interval(0, 6)[0] == 0.0
    assert wilson_interval(12, 12) == (pytest.approx(0.75750, abs=1e-5), 1.0)
