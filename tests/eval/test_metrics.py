"""coop_dag.eval.metrics: plan_first / plan_content / follow_through / edit_follow_through under the
§6 rules (default) and the seed's v5 rules, and their statistics, on hand-built runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from coop_dag.agent.actions import to_qwen_xml
from coop_dag.eval.entities import feature_names, mentioned_paths, names_in_message
from coop_dag.eval.metrics import (
    MISSING_TURNS,
    RATE_KEYS,
    eval_outcome,
    main_score,
    score_pairs,
    score_run,
)
from coop_dag.eval.plan_checks import patch_files, plan_keywords, referenced_files
from coop_dag.eval.runlogs import RunLogError, iter_pairs
from coop_dag.eval.stats import cluster_bootstrap, metric_bootstrap, paired_deltas, wilson_interval

A_FILE, B_FILE = "src/pkg/a.py", "src/pkg/b.py"
# The task text every hand-built agent gets: its "Files Modified" list is what makes a path real
# when no dataset is reachable (these runs' repo, demo_task, is not in the bundled dataset).
TASK = (
    "## Your Task\n\n**Title**: Add a flag\n\n**Description**:\nAdd `--flag`; the parser calls "
    f"`_read_flag()` on `Loader` objects.\n\n**Files Modified**\n- `{A_FILE}`\n- `{B_FILE}`\n\n"
    "## Your Situation\n\nYou are an agent."
)
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
            {"role": "user", "content": TASK},
            *messages,
        ],
    }


def write_pair(
    run: Path, trajs: dict, repo="demo_task", task="1", eval_json=None, patches=None
) -> Path:
    a, b = sorted(trajs)
    d = run / "coop" / repo / task / f"f{a}_f{b}"
    d.mkdir(parents=True, exist_ok=True)
    for fid, t in trajs.items():
        if t is not None:
            (d / f"agent{fid}_traj.json").write_text(t if isinstance(t, str) else json.dumps(t))
    for fid, patch in (patches or {}).items():
        (d / f"agent{fid}.patch").write_text(patch)
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    return d


def diff(*paths: str, line: str = "x = 1") -> str:
    """A git diff changing each of `paths` (one added line)."""
    return "".join(
        f"diff --git a/{p} b/{p}\nindex 1111111..2222222 100644\n--- a/{p}\n+++ b/{p}\n"
        f"@@ -1,1 +1,2 @@ def _read_flag(args):\n old\n+{line}\n"
        for p in paths
    )


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


@pytest.fixture(autouse=True)
def _no_dataset_env(monkeypatch):
    # The base-repository check must come only from what a test passes.
    monkeypatch.delenv("COOP_DAG_DATASET", raising=False)
    monkeypatch.delenv("COOP_DAG_MIRROR_DIR", raising=False)


def score_one(tmp_path: Path, t1, t2, rules="s6", patches=None, **kw) -> dict:
    write_pair(tmp_path, {1: t1, 2: t2}, patches=patches)
    result = score_run(tmp_path, rules, **kw)
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
        1,
        [
            tool_turn(command),
            obs(f"[Message from agent2]: {ACK}"),
            tool_turn(f"vi {A_FILE}"),
            obs(),
        ],
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
        obs(),
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
        obs(),
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
    assert (
        no_path["reason"] == "agent1: first message names no real task file or function (no path)"
    )
    no_path_v5 = score_one(
        tmp_path / "c",
        agent1_says("Plan: I'll take the CLI, you the docs."),
        traj(2, responder()),
        rules="seed-v5",
    )
    assert no_path_v5["reason"] == "agent1: first message names no file path"


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


@pytest.mark.parametrize(
    ("rules", "agent1"), [("s6", False), ("seed-v5", True)], ids=["s6", "seed-v5"]
)
def test_follow_through_on_a_partner_only_file(tmp_path, rules, agent1):
    """agent1 planned only A_FILE and then grepped B_FILE, which only agent2 planned: §6 takes
    the agent's *own* plan (no follow-through); the seed's v5 union counts it."""
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
    row = score_one(tmp_path, traj(1, t1), traj(2, t2), rules=rules)
    assert row["plan_files"] == [A_FILE, B_FILE]
    assert row["follow_through"] == {"agent1": agent1, "agent2": False}
    assert row["n_follow_through"] == int(agent1)
    if rules == "seed-v5":
        assert "agent2: no later bash command references a plan file" in row["reasons"]
    else:
        assert row["agents"]["agent1"]["plan_real_paths"] == [A_FILE]
        assert (
            "agent1: no successful command or patch change touches its own plan" in row["reasons"]
        )


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
        obs("Message sent to agent2."),
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
        obs(),
    ]
    t_second = [
        inbox("agent1", plan),
        tool_turn(f'send_message agent1 "{ACK}"'),
        obs("Message sent to agent1."),
        tool_turn(f"vi {B_FILE}"),
        obs(),
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


# -- §6 rules, case by case ------------------------------------------------------------------------


def plan_then(body: str, *later: dict, wait_reply: str = ACK) -> list[dict]:
    """agent1 sends `body` to agent2 with --wait, gets `wait_reply`, then does `later`."""
    return [
        tool_turn(f"send_message --wait agent2 <<'MSG'\n{body}\nMSG"),
        obs(f"Message sent to agent2.\n[Message from agent2]: {wait_reply}"),
        *later,
    ]


def failed(text: str, code: int = 2) -> dict:
    return {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": text,
        "extra": {"returncode": code},
    }


def test_invented_path_is_not_plan_content(tmp_path):
    body = "Plan: I'll take src/pkg/nothere.py, you take the docs. First step: the flag."
    t1 = traj(1, plan_then(body, tool_turn("cat src/pkg/nothere.py"), obs("")))
    s6 = score_one(tmp_path / "s6", t1, traj(2, responder()))
    assert s6["plan_content"] is False
    assert s6["reason"] == (
        "agent1: first message names no real task file or function (src/pkg/nothere.py)"
    )
    assert s6["agents"]["agent1"]["plan_paths"] == ["src/pkg/nothere.py"]
    assert s6["agents"]["agent1"]["plan_real_paths"] == []
    assert s6["follow_through"]["agent1"] is False  # nothing real to follow
    v5 = score_one(tmp_path / "v5", t1, traj(2, responder()), rules="seed-v5")
    assert v5["plan_content"] is True  # the seed's regex takes any path-shaped string


@pytest.mark.parametrize("named", [f"/workspace/repo/{A_FILE}", f"./{A_FILE}", "pkg/a.py", "a.py"])
def test_absolute_relative_and_short_forms_name_the_real_file(tmp_path, named):
    body = f"Plan: I'll edit {named}, you take the rest."
    t1 = traj(1, plan_then(body, tool_turn(f"sed -i s/a/b/ {A_FILE}"), obs("")))
    row = score_one(tmp_path, t1, traj(2, responder()))
    assert row["agents"]["agent1"]["plan_real_paths"] == [A_FILE]
    assert row["plan_content"] is True
    assert row["follow_through"]["agent1"] is True


def test_absolute_path_is_missed_by_the_seed_regex(tmp_path):
    body = f"Plan: I'll edit /workspace/repo/{A_FILE}, you take the rest."
    t1 = traj(1, plan_then(body, tool_turn(f"cat {A_FILE}"), obs("")))
    assert score_one(tmp_path / "s6", t1, traj(2, responder()))["plan_content"] is True
    assert (
        score_one(tmp_path / "v5", t1, traj(2, responder()), rules="seed-v5")["plan_content"]
        is False
    )


def test_message_to_self_is_not_plan_first(tmp_path):
    t1 = [
        tool_turn(f'send_message agent1 "{PLAN}"'),
        obs("Message sent to agent1."),
        inbox("agent2", ACK),
        tool_turn(f"sed -i s/a/b/ {A_FILE}"),
        obs(""),
    ]
    s6 = score_one(tmp_path / "s6", traj(1, t1), traj(2, responder()))
    assert s6["plan_first"] is False and s6["plan_content"] is False
    assert "agent1: first send_message goes to agent1, not to its partner agent2" in s6["reasons"]
    assert "agent1: no send_message to its partner" in s6["reasons"]
    assert s6["agents"]["agent1"]["first_message"] is None
    assert s6["follow_through"]["agent1"] is False  # no plan was sent, so none to follow
    v5 = score_one(tmp_path / "v5", traj(1, t1), traj(2, responder()), rules="seed-v5")
    assert outcome(v5) == (True, True, {"agent1": True, "agent2": True})


def test_failed_ls_is_not_follow_through(tmp_path):
    missing = f"ls: cannot access '{A_FILE}': No such file or directory"
    t1 = traj(1, plan_then(PLAN, tool_turn(f"ls {A_FILE}"), failed(missing)))
    s6 = score_one(tmp_path / "s6", t1, traj(2, responder()))
    assert s6["follow_through"]["agent1"] is False
    assert (
        "agent1: its commands on its plan's entities failed (return code 2): ls src/pkg/a.py"
        in (s6["reasons"])
    )
    v5 = score_one(tmp_path / "v5", t1, traj(2, responder()), rules="seed-v5")
    assert v5["follow_through"]["agent1"] is True


@pytest.mark.parametrize("code", [2, 0], ids=["grep-fails", "grep-or-true"])
def test_grep_of_a_missing_file_is_not_follow_through(tmp_path, code):
    text = f"grep: {A_FILE}: No such file or directory"
    cmd = f"grep -n flag {A_FILE}" + (" || true" if code == 0 else "")
    t1 = traj(1, plan_then(PLAN, tool_turn(cmd), failed(text, code)))
    row = score_one(tmp_path, t1, traj(2, responder()))
    assert row["follow_through"]["agent1"] is False
    # ... and a later successful read does count
    t1["messages"] += [tool_turn(f"cat {A_FILE}"), obs("x = 0")]
    row = score_one(tmp_path / "again", t1, traj(2, responder()))
    assert row["follow_through"]["agent1"] is True
    assert row["agents"]["agent1"]["follow_through_command"] == f"cat {A_FILE}"


def test_command_without_a_recorded_return_code_does_not_count(tmp_path):
    t1 = traj(1, plan_then(PLAN, tool_turn(f"vi {A_FILE}")))  # the run ended before an answer
    assert score_one(tmp_path, t1, traj(2, responder()))["follow_through"]["agent1"] is False


@pytest.mark.parametrize(
    ("observation", "ok"),
    [
        ({"role": "tool", "tool_call_id": "call_0", "content": '{"returncode": 0}'}, True),
        ({"role": "user", "content": "<returncode>0</returncode>\n<output>x</output>"}, True),
        ({"role": "user", "content": "<returncode>1</returncode>\n<output></output>"}, False),
    ],
    ids=["runtime-json", "mini-swe-agent", "mini-swe-agent-failed"],
)
def test_return_code_read_from_the_observation_text(tmp_path, observation, ok):
    t1 = traj(1, plan_then(PLAN, tool_turn(f"cat {A_FILE}"), observation))
    assert score_one(tmp_path, t1, traj(2, responder()))["follow_through"]["agent1"] is ok


def test_edit_vs_read(tmp_path):
    """Reading the planned file is follow-through but not edit_follow_through; the final patch
    modifying it is both -- even when no command touched it successfully."""
    read = traj(1, plan_then(PLAN, tool_turn(f"cat {A_FILE}"), obs("x = 0")))
    row = score_one(tmp_path / "read", read, traj(2, responder()))
    assert row["follow_through"]["agent1"] is True
    assert row["edit_follow_through"]["agent1"] is False
    assert row["agents"]["agent1"]["edit_follow_through_reason"] == "agent1: no final patch"

    silent = traj(1, plan_then(PLAN))  # planned, never ran a command, but its patch edits a.py
    row = score_one(tmp_path / "edit", silent, traj(2, responder()), patches={1: diff(A_FILE)})
    assert row["follow_through"]["agent1"] is True
    assert row["agents"]["agent1"]["follow_through_patch"] == [A_FILE]
    assert row["edit_follow_through"]["agent1"] is True
    assert row["agents"]["agent1"]["edited_plan_files"] == [A_FILE]


def test_edit_follow_through_needs_a_file_of_its_own_plan(tmp_path):
    body = f"Plan: I'll take {A_FILE}, you the rest."
    t1 = traj(1, plan_then(body, tool_turn(f"cat {A_FILE}"), obs("")))
    t2 = traj(2, responder())
    other = score_one(tmp_path / "other", t1, t2, patches={1: diff(B_FILE), 2: diff(B_FILE)})
    assert other["edit_follow_through"] == {"agent1": False, "agent2": True}
    assert other["agents"]["agent1"]["edit_follow_through_reason"] == (
        "agent1: its patch modifies none of the files its plan named"
    )
    both = score_one(tmp_path / "both", t1, t2, patches={1: diff(B_FILE, A_FILE)})
    assert both["edit_follow_through"] == {"agent1": True, "agent2": False}
    assert both["n_edit_follow_through"] == 1
    s = score_run(tmp_path / "both")["summary"]
    assert s["edit_follow_through_rate"] == 0.5 and s["n_edit_follow_through_agents"] == 1
    assert s["edit_follow_through_ci95"] == list(wilson_interval(1, 2))


def test_follow_through_uses_commands_of_its_own_after_its_plan(tmp_path):
    early = traj(1, [tool_turn(f"cat {A_FILE}"), obs("x")] + plan_then(PLAN))
    row = score_one(tmp_path, early, traj(2, responder()))
    assert row["follow_through"]["agent1"] is False  # read before planning: not following it


def test_horizon_limits_follow_through_commands(tmp_path):
    t1 = traj(1, plan_then(PLAN, tool_turn("ls"), obs(""), tool_turn(f"cat {A_FILE}"), obs("")))
    assert score_one(tmp_path / "a", t1, traj(2, responder()))["follow_through"]["agent1"]
    row = score_one(tmp_path / "b", t1, traj(2, responder()), horizon=2)  # turns 0 and 1 only
    assert row["follow_through"]["agent1"] is False


def test_function_names_from_the_feature_text_are_real_entities(tmp_path):
    assert {"_read_flag", "Loader"} <= feature_names(TASK)
    assert "flag" not in feature_names(TASK)  # `--flag` is an option, not a function
    # Python's own names are not the task's; the coop prompt's `send_message` is not either
    assert not feature_names("use `text.rstrip()`, `__post_init__`, `send_message`, `len()`")
    assert feature_names("```python\ndef _metavar(option):\n    return str(option)\n```") == {
        "_metavar"
    }
    assert names_in_message("I'll change _read_flag and the Loader class", {"_read_flag"}) == [
        "_read_flag"
    ]
    # a plain English word only names a function when written as code
    assert names_in_message("I'll parse it", {"parse"}) == []
    assert names_in_message("I'll change `parse` and parse()", {"parse"}) == ["parse"]
    body = "Plan: I'll rework _read_flag() first, you take the docs."
    t1 = traj(1, plan_then(body, tool_turn(f"grep -n _read_flag {A_FILE}"), obs("3:def")))
    row = score_one(tmp_path, t1, traj(2, responder()))
    assert row["agents"]["agent1"]["plan_real_names"] == ["_read_flag"]
    assert row["plan_content"] is True and row["follow_through"]["agent1"] is True
    vague = traj(1, plan_then("Plan: I'll rework the reader first, you take the docs."))
    assert score_one(tmp_path / "v", vague, traj(2, responder()))["plan_content"] is False


def make_dataset(root: Path, repo: str = "demo_task") -> Path:
    """A dataset whose demo_task/task1 base repo has a.py, b.py and c.py (c defines load_c)."""
    src = root / repo / "task1" / "repo" / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "a.py").write_text("def _read_flag(args):\n    return args\n")
    (src / "b.py").write_text("x = 1\n")
    (src / "c.py").write_text("class Cache:\n    pass\n\n\ndef load_c():\n    return 1\n")
    (root / repo / "task1" / "feature1").mkdir()
    (root / repo / "task1" / "feature1" / "feature.md").write_text(
        "**Title**: t\n\n**Description**: touch `src/pkg/c.py`\n\n"
        "**Files Modified**\n- `src/pkg/a.py`\n"
    )
    return root


def test_base_repository_files_and_definitions_count_when_the_dataset_is_reachable(
    tmp_path, monkeypatch
):
    body = "Plan: I'll take src/pkg/c.py and load_c, you the rest."
    t1 = traj(1, plan_then(body, tool_turn("cat src/pkg/c.py"), obs("")))
    without = score_one(tmp_path / "run", t1, traj(2, responder()))
    assert without["plan_content"] is False  # c.py is in no Files Modified list
    assert without["task_entities"]["sources"] == ["task text"]
    data = make_dataset(tmp_path / "data")
    flag = score_run(tmp_path / "run", dataset=data)["per_pair"][0]
    assert flag["plan_content"] is True and flag["follow_through"]["agent1"] is True
    assert flag["agents"]["agent1"]["plan_real_paths"] == ["src/pkg/c.py"]
    assert flag["agents"]["agent1"]["plan_real_names"] == ["load_c"]  # defined in a task file
    assert flag["task_entities"]["sources"] == ["task text", "base repository (bundled)"]
    monkeypatch.setenv("COOP_DAG_DATASET", str(data))
    assert score_run(tmp_path / "run")["per_pair"][0]["plan_content"] is True
    # an invented path stays invented with the base repository in view
    t1 = traj(1, plan_then("Plan: I'll take src/pkg/d.py, you the rest."))
    assert score_one(tmp_path / "run2", t1, traj(2, responder()))["plan_content"] is False


def test_the_bundled_dataset_is_found_by_repo_name(tmp_path):
    from coop_dag import BUNDLED_DATASET
    from coop_dag.eval.entities import dataset_roots, find_task_dir, task_entities

    task_dir = find_task_dir("argkit_task", "104", dataset_roots())
    assert task_dir == BUNDLED_DATASET / "argkit_task" / "task104"
    entities = task_entities([], task_dir, features=[1])
    assert "src/argkit/parser.py" in entities.files and "_convert" in entities.names
    assert "SpecError" not in entities.names  # named by feature 4, which is not in the pair
    assert "SpecError" in task_entities([], task_dir, features=[1, 4]).names
    assert entities.resolve_path("/workspace/repo/src/argkit/spec.py") == ["src/argkit/spec.py"]
    assert entities.resolve_path("src/argkit/options.py") == []


def test_mentioned_paths_and_patch_files():
    assert mentioned_paths(f"edit /workspace/repo/{A_FILE} and ./{B_FILE} and /tmp/x.py") == [
        A_FILE,
        B_FILE,
        "tmp/x.py",
    ]
    renamed = "diff --git a/old.py b/new.py\nsimilarity index 90%\n"
    assert patch_files(diff(A_FILE) + renamed) == [A_FILE, "old.py", "new.py"]
    assert patch_files(f"--- a/{A_FILE}\n+++ b/{A_FILE}\n@@ -1 +1 @@\n-a\n+b\n") == [A_FILE]
    assert patch_files("") == []


def test_unknown_rules_are_refused(tmp_path):
    write_pair(tmp_path, {1: traj(1, proposer()), 2: traj(2, responder())})
    with pytest.raises(ValueError, match="unknown metric rules 'v6'.*s6, seed-v5"):
        score_run(tmp_path, "v6")


# -- seed-v5 reproduces the old scorer ------------------------------------------------------------


def v5_corpus(run: Path) -> None:
    """Pairs that exercise every rule difference. The old scorer (coop_dag.eval.metrics before the
    §6 rules, commit c19f0e5) gave the numbers in `OLD_V5`."""
    good = {1: traj(1, proposer()), 2: traj(2, responder())}
    write_pair(run, good, task="1")
    partner_only = [
        tool_turn(f'send_message --wait agent2 "Plan: I\'ll take {A_FILE}, you the rest."'),
        obs(f"[Message from agent2]: OK, I'll do {B_FILE} first."),
        tool_turn(f"grep -n flag {B_FILE}"),
        obs("1:flag"),
    ]
    write_pair(run, {1: traj(1, partner_only), 2: traj(2, responder())}, task="2")
    missing = f"ls: cannot access '{A_FILE}': No such file or directory"
    write_pair(
        run,
        {1: traj(1, plan_then(PLAN, tool_turn(f"ls {A_FILE}"), failed(missing))), 2: good[2]},
        task="3",
    )
    to_self = [
        tool_turn(f'send_message agent1 "{PLAN}"'),
        inbox("agent2", ACK),
        tool_turn(f"vi {A_FILE}"),
    ]
    write_pair(run, {1: traj(1, to_self), 2: good[2]}, task="4")
    absolute = plan_then(f"Plan: I'll edit /workspace/repo/{A_FILE}, you the rest.")
    write_pair(run, {1: traj(1, absolute + [tool_turn(f"cat {A_FILE}")]), 2: good[2]}, task="5")
    invented = plan_then("Plan: I'll take src/pkg/nothere.py, you the docs.")
    write_pair(run, {1: traj(1, invented + [tool_turn("cat src/x.py")]), 2: good[2]}, task="6")
    write_pair(run, {1: traj(1, [tool_turn("ls")] + proposer()), 2: good[2]}, task="7")
    write_pair(run, {1: traj(1, proposer()), 2: traj(2, [])}, task="8")


# Printed by the pre-§6 scorer on v5_corpus (run from the parent commit's checkout).
OLD_V5 = {
    "summary": {
        "n_pairs": 8,
        "n_plan_first": 6,
        "n_plan_content": 6,
        "n_follow_through_agents": 13,
        "n_agents": 16,
    },
    "per_pair": {
        "demo_task/1/f1_f2": [True, True, {"agent1": True, "agent2": True}],
        "demo_task/2/f1_f2": [True, True, {"agent1": True, "agent2": True}],
        "demo_task/3/f1_f2": [True, True, {"agent1": True, "agent2": True}],
        "demo_task/4/f1_f2": [True, True, {"agent1": True, "agent2": True}],
        "demo_task/5/f1_f2": [True, False, {"agent1": True, "agent2": True}],
        "demo_task/6/f1_f2": [True, True, {"agent1": False, "agent2": True}],
        "demo_task/7/f1_f2": [False, True, {"agent1": True, "agent2": True}],
        "demo_task/8/f1_f2": [False, False, {"agent1": False, "agent2": False}],
    },
}


def test_seed_v5_rules_reproduce_the_old_scorer(tmp_path):
    v5_corpus(tmp_path)
    result = score_run(tmp_path, "seed-v5")
    s = result["summary"]
    assert {k: s[k] for k in OLD_V5["summary"]} == OLD_V5["summary"]
    got = {
        r["pair_id"]: [r["plan_first"], r["plan_content"], r["follow_through"]]
        for r in result["per_pair"]
    }
    assert got == OLD_V5["per_pair"]
    # and the §6 rules disagree on exactly the cases they were written for
    s6 = {r["pair_id"]: r for r in score_run(tmp_path)["per_pair"]}
    assert s6["demo_task/2/f1_f2"]["follow_through"]["agent1"] is False  # partner-only file
    assert s6["demo_task/3/f1_f2"]["follow_through"]["agent1"] is False  # failed ls
    assert s6["demo_task/4/f1_f2"]["plan_first"] is False  # message to self
    assert s6["demo_task/5/f1_f2"]["plan_content"] is True  # absolute path
    assert s6["demo_task/6/f1_f2"]["plan_content"] is False  # invented path


# -- malformed trajectories are errors, and said so ----------------------------------------------


def test_trajectory_without_messages_is_counted_as_an_error_with_a_warning(tmp_path, caplog):
    no_messages = {k: v for k, v in traj(1, proposer()).items() if k != "messages"}
    d = write_pair(tmp_path, {1: no_messages, 2: traj(2, responder())})
    with caplog.at_level("WARNING", logger="coop_dag.eval.metrics"):
        result = score_run(tmp_path)
    (error,) = result["errors"]
    assert error == f"{d / 'agent1_traj.json'}: trajectory has no 'messages' field"
    assert result["summary"]["n_errors"] == 1
    assert result["per_pair"][0]["reason"] == MISSING_TURNS
    assert [r.getMessage() for r in caplog.records] == [error]


def test_in_memory_trajectory_without_messages_is_an_error(tmp_path):
    write_pair(tmp_path, {1: traj(1, proposer()), 2: traj(2, responder())})
    (pair,) = iter_pairs(tmp_path)
    del pair.trajectories["agent2"]["messages"]
    seen: list[str] = []
    result = score_pairs([pair], warn=seen.append)
    assert seen == ["demo_task/1/f1_f2 agent2: trajectory has no 'messages' field"]
    assert result["summary"]["n_errors"] == 1 and result["summary"]["plan_first_rate"] == 0.0


def test_main_score_warns_on_stderr_for_each_error(tmp_path, capsys):
    write_pair(tmp_path, {1: {"agent_id": "agent1"}, 2: "[1, 2]"})
    main_score(tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") for line in err)
    assert "trajectory has no 'messages' field" in err[0]
    assert "trajectory is not a JSON object" in err[1]


# -- statistics -----------------------------------------------------------------------------------


def clustered_run(run: Path, copies: int = 3) -> None:
    """4 features of one task in all 6 pairs, each agent's behaviour decided by its feature
    (greedy decoding on the same task text): features 1 and 2 follow through, 3 and 4 don't.
    `copies` tasks repeat the same pattern."""
    for task in range(1, copies + 1):
        for a, b in ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)):
            trajs = {}
            for fid, partner in ((a, b), (b, a)):
                me, other = f"agent{fid}", f"agent{partner}"
                plan = f"Plan: I'll take {A_FILE}, you take {B_FILE}."
                msgs = [
                    tool_turn(f'send_message --wait {other} "{plan}"'),
                    obs(f"[Message from {other}]: ok"),
                ]
                if fid in (1, 2):
                    msgs += [tool_turn(f"cat {A_FILE}"), obs("x")]
                trajs[fid] = traj(fid, msgs, me)
            write_pair(run, trajs, task=str(task))


def test_cluster_bootstrap_interval_sanity(tmp_path):
    clustered_run(tmp_path, copies=1)
    s = score_run(tmp_path)["summary"]
    assert s["n_agents"] == 12 and s["follow_through_rate"] == 0.5
    assert (s["follow_through_n"], s["follow_through_n_clusters"]) == (12, 4)
    lo, hi = s["follow_through_cluster_ci95"]
    wlo, whi = s["follow_through_ci95"]
    assert lo <= 0.5 <= hi
    assert hi - lo > whi - wlo  # 12 agents, but only 4 independent features
    assert (
        s["follow_through_cluster_ci95"]
        == score_run(tmp_path)["summary"]["follow_through_cluster_ci95"]
    )  # seeded: the same run gives the same interval
    # all-equal outcomes: the interval collapses onto the rate
    assert s["plan_first_rate"] == 1.0 and s["plan_first_cluster_ci95"] == [1.0, 1.0]
    assert (s["plan_first_n"], s["plan_first_n_clusters"]) == (6, 4)


def test_cluster_bootstrap_matches_wilson_scale_without_clusters():
    values = [1.0] * 30 + [0.0] * 20
    independent = cluster_bootstrap(values, [(f"f{i}",) for i in range(50)], seed=1)
    # 5 features of 10 identical outcomes each (3 all-1, 2 all-0): really 5 observations
    clustered = cluster_bootstrap(values, [(f"f{i // 10}",) for i in range(50)], seed=1)
    wlo, whi = wilson_interval(30, 50)
    lo, hi = independent["ci95"]
    assert abs((hi - lo) - (whi - wlo)) < 0.06  # same scale as Wilson when units are independent
    assert clustered["ci95"][1] - clustered["ci95"][0] > 1.5 * (hi - lo)
    # mixed outcomes spread evenly over the features: no cluster effect, no extra width
    mixed = cluster_bootstrap(values, [(f"f{i % 5}",) for i in range(50)], seed=1)
    assert mixed["ci95"] == [0.6, 0.6]
    assert cluster_bootstrap(values, [(f"f{i}",) for i in range(50)], seed=1) == independent
    assert cluster_bootstrap([], [])["ci95"] is None
    with pytest.raises(ValueError, match="2 values but 1 cluster"):
        cluster_bootstrap([1.0, 0.0], [("f1",)])


def test_bar_checks_use_the_point_estimate_and_report_the_lower_bound(tmp_path):
    clustered_run(tmp_path, copies=1)
    checks = score_run(tmp_path)["summary"]["bar_checks"]
    assert checks["plan_first"] == {
        "rate": 1.0,
        "threshold": 0.7,
        "passes": True,
        "lower_bound": 1.0,
        "lower_bound_clears_bar": True,
    }
    ft = checks["follow_through"]
    assert ft["passes"] is False and ft["lower_bound_clears_bar"] is False
    assert ft["lower_bound"] < 0.5


def test_paired_deltas_between_two_runs_on_the_same_pairs(tmp_path):
    clustered_run(tmp_path / "student", copies=2)
    base = tmp_path / "base"
    for task in ("1", "2"):
        for a, b in ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)):
            silent = {fid: traj(fid, [text_turn("I am not sure.")]) for fid in (a, b)}
            write_pair(base, silent, task=task)
    student, baseline = score_run(tmp_path / "student"), score_run(base)
    deltas = paired_deltas(student, baseline)
    pf = deltas["plan_first"]
    assert (pf["delta"], pf["rate"], pf["baseline_rate"], pf["n"]) == (1.0, 1.0, 0.0, 12)
    assert pf["ci95"] == [1.0, 1.0] and pf["n_clusters"] == 8
    ft = deltas["follow_through"]
    assert ft["delta"] == 0.5 and ft["n"] == 24
    assert ft["ci95"][0] <= 0.5 <= ft["ci95"][1] and ft["ci95"][1] - ft["ci95"][0] > 0.2
    assert paired_deltas(student, baseline) == deltas  # deterministic
    same = paired_deltas(student, student)["follow_through"]
    assert same["delta"] == 0.0 and same["ci95"] == [0.0, 0.0]  # paired: no spurious spread
    assert "both_passed" not in deltas  # no eval.json: no units


def test_metric_bootstrap_clusters_agents_by_their_own_feature(tmp_path):
    clustered_run(tmp_path, copies=1)
    rows = score_run(tmp_path)["per_pair"]
    boot = metric_bootstrap(rows, "follow_through")
    assert boot["n"] == 12 and boot["n_clusters"] == 4
    assert metric_bootstrap(rows, "both_passed")["n"] == 0


# -- the command line ------------------------------------------------------------------------------


def test_cli_score_names_every_rate_key(tmp_path, capsys):
    from coop_dag.cli import main

    write_pair(tmp_path / "run", {1: traj(1, proposer()), 2: traj(2, responder())})
    assert main(["score", str(tmp_path / "run")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(RATE_KEYS) <= set(printed) and "edit_follow_through_rate" in printed
    assert printed["rate_keys"] == list(RATE_KEYS) and printed["rules"] == "s6"
    assert all(f"{m}_cluster_ci95" in printed for m in ("plan_first", "edit_follow_through"))
    assert main(["score", str(tmp_path / "run"), "--rules", "seed-v5"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"] == "seed-v5"
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "full.json"
    assert main(["score", str(tmp_path / "run"), "--dataset", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    full = json.loads(out.read_text())
    assert full["per_pair"][0]["task_entities"]["sources"][1] == "base repository (bundled)"
    assert full["summary"]["base_repositories"] == {
        "demo_task/1": f"bundled:{data / 'demo_task' / 'task1' / 'repo'}"
    }
    assert main(["score", str(tmp_path / "run"), "--dataset", str(tmp_path / "nope")]) == 2
    assert "--dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "run"), "--rules", "v6"])


def test_base_repository_from_a_mirror_at_the_dockerfile_commit(tmp_path):
    import subprocess

    from coop_dag.dataset.base_repo import base_tree

    mirror = tmp_path / "mirror" / "acme" / "widget"
    (mirror / "src").mkdir(parents=True)
    (mirror / "src" / "w.py").write_text("def spin_widget():\n    pass\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=mirror, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    sha = git("rev-parse", "HEAD")
    (mirror / "src" / "later.py").write_text("x = 1\n")  # not in the base commit
    git("add", "-A")
    git("commit", "-q", "-m", "later")
    task_dir = tmp_path / "data" / "widget_task" / "task1"
    task_dir.mkdir(parents=True)
    (task_dir / "Dockerfile").write_text(
        f"RUN git clone https://github.com/acme/widget.git repo && cd repo && git checkout {sha}\n"
    )
    assert base_tree(task_dir) is None  # no mirror given: no base-repository check
    tree = base_tree(task_dir, tmp_path / "mirror")
    assert tree is not None and tree.files == {"src/w.py"} and tree.kind == f"mirror@{sha}"
    assert tree.read("src/w.py").startswith("def spin_widget") and tree.read("nope.py") is None
