"""coop_dag.eval.runlogs: the CooperBench run layout, trajectories, and actions read from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coop_dag.agent.actions import to_qwen_xml
from coop_dag.eval.runlogs import (
    RunLogError,
    agent_actions,
    agent_timeline,
    iter_pairs,
    load_trajectory,
    split_command,
)

# -- builders ----------------------------------------------------------------------------------


def tool_turn(*commands: str, content: str = "") -> dict:
    """An assistant turn whose commands are OpenAI tool_calls (no extra.actions)."""
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


def xml_turn(*commands: str, prose: str = "Let me coordinate first.\n") -> dict:
    return {
        "role": "assistant",
        "content": prose + "\n".join(to_qwen_xml(c) for c in commands),
        "extra": {"timestamp": 1.0},
    }


def runtime_turn(*commands: str, content: str = "") -> dict:
    """An assistant turn as our runtime records it: extra.actions is authoritative."""
    return {
        "role": "assistant",
        "content": content,
        "extra": {"timestamp": 1.0, "actions": list(commands)},
    }


def obs(text: str, call_id: str = "call_0") -> dict:
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "content": text,
        "extra": {"returncode": 0, "timestamp": 2.0},
    }


def inbox(sender: str, text: str) -> dict:
    return {
        "role": "user",
        "content": f"[Message from {sender}]: {text}",
        "extra": {"timestamp": 2.0},
    }


def traj(agent_id: str, fid: int, messages: list[dict]) -> dict:
    return {
        "repo": "demo_task",
        "task_id": 1,
        "feature_id": fid,
        "agent_id": agent_id,
        "model": "test",
        "status": "Submitted",
        "cost": 0.0,
        "steps": sum(m["role"] == "assistant" for m in messages),
        "prompt": "default",
        "messages": [
            {"role": "system", "content": "You are agent."},
            {"role": "user", "content": "Implement feature. Touch src/pkg/a.py."},
            *messages,
        ],
    }


def write_pair(
    run: Path, repo: str, task: str, a: int, b: int, trajs: dict, eval_json=None
) -> Path:
    d = run / "coop" / repo / task / f"f{a}_f{b}"
    d.mkdir(parents=True, exist_ok=True)
    for fid, t in trajs.items():
        path = d / f"agent{fid}_traj.json"
        path.write_text(t if isinstance(t, str) else json.dumps(t))
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    return d


# -- layout ----------------------------------------------------------------------------------


def test_iter_pairs_reads_the_layout_in_order(tmp_path):
    t1 = traj("agent1", 1, [runtime_turn("ls")])
    t2 = traj("agent2", 2, [runtime_turn("pwd")])
    write_pair(tmp_path, "b_task", "7", 1, 2, {1: t1, 2: t2}, {"both_passed": True})
    write_pair(tmp_path, "a_task", "10", 1, 2, {1: t1, 2: t2})
    write_pair(tmp_path, "a_task", "9", 2, 3, {2: t1, 3: t2})
    (tmp_path / "coop" / "a_task" / "9" / ".f2_f3.abc123").mkdir()  # a staging dir: ignored
    pairs = list(iter_pairs(tmp_path))
    assert [p.pair_id for p in pairs] == ["a_task/9/f2_f3", "a_task/10/f1_f2", "b_task/7/f1_f2"]
    p = pairs[0]
    assert (p.repo, p.task_id, p.feature_a, p.feature_b) == ("a_task", "9", 2, 3)
    assert set(p.trajectories) == {"agent2", "agent3"}
    assert p.trajectories["agent2"]["messages"][-1]["extra"]["actions"] == ["ls"]
    assert p.eval is None and p.errors == []
    assert pairs[2].eval == {"both_passed": True}
    assert p.dir == tmp_path / "coop" / "a_task" / "9" / "f2_f3"


def test_run_dir_may_be_the_coop_folder_itself(tmp_path):
    write_pair(tmp_path, "r_task", "1", 1, 2, {1: traj("agent1", 1, []), 2: traj("agent2", 2, [])})
    assert [p.pair_id for p in iter_pairs(tmp_path / "coop")] == ["r_task/1/f1_f2"]


def test_not_a_cooperbench_dir_raises_naming_the_path(tmp_path):
    (tmp_path / "logs" / "something").mkdir(parents=True)
    with pytest.raises(RunLogError, match=str(tmp_path / "logs")):
        iter_pairs(tmp_path / "logs")
    with pytest.raises(RunLogError, match="does not exist"):
        iter_pairs(tmp_path / "nope")
    (tmp_path / "empty" / "coop" / "r_task" / "1").mkdir(parents=True)
    with pytest.raises(RunLogError, match="no pair directories"):
        iter_pairs(tmp_path / "empty")


def test_malformed_trajectory_is_recorded_with_its_path(tmp_path):
    d = write_pair(tmp_path, "r_task", "1", 1, 2, {1: '{"messages": [', 2: traj("agent2", 2, [])})
    (d / "eval.json").write_text("not json")
    (pair,) = iter_pairs(tmp_path)
    assert pair.trajectories["agent1"] is None
    assert pair.trajectories["agent2"]["agent_id"] == "agent2"
    assert any(str(d / "agent1_traj.json") in e and "malformed JSON" in e for e in pair.errors)
    assert any(str(d / "eval.json") in e for e in pair.errors)
    assert pair.eval is None


def test_missing_trajectory_file_is_reported(tmp_path):
    d = write_pair(tmp_path, "r_task", "1", 1, 2, {2: traj("agent2", 2, [])})
    (pair,) = iter_pairs(tmp_path)
    assert pair.trajectories["agent1"] is None
    assert pair.errors == [f"{d / 'agent1_traj.json'}: missing trajectory file"]


def test_load_trajectory_rejects_non_objects(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("[1, 2]")
    with pytest.raises(RunLogError, match=str(bad)):
        load_trajectory(bad)
    bad.write_text('{"messages": "oops"}')
    with pytest.raises(RunLogError, match="messages"):
        load_trajectory(bad)
    bad.write_text('{"agent_id": "agent1", "steps": 3}')  # no messages: malformed, not empty
    with pytest.raises(RunLogError, match="no 'messages' field"):
        load_trajectory(bad)


# -- actions -------------------------------------------------------------------------------


def test_actions_from_tool_calls_are_classified():
    t = traj(
        "agent1",
        1,
        [
            tool_turn("send_message --wait agent2 'Plan: I take src/a.py'", "ls -la"),
            obs("Message sent to agent2.\n[Message from agent2]: ok, I take src/b.py"),
            obs("file listing", "call_1"),
            tool_turn('send_message agent2 "done" && cat src/a.py'),
        ],
    )
    actions = agent_actions(t)
    assert [a.index for a in actions] == [0, 1, 2]
    assert [a.turn for a in actions] == [0, 0, 1]
    a0, a1, a2 = actions
    assert a0.is_send and not a0.has_bash
    assert (a0.sends[0].to, a0.sends[0].content, a0.sends[0].wait) == (
        "agent2",
        "Plan: I take src/a.py",
        True,
    )
    assert a1.bash == "ls -la" and not a1.is_send
    # the --wait reply arrived in turn 0's observation: it was in context only for turn 1
    assert [a.received_before for a in actions] == [0, 0, 1]
    assert a2.is_send and a2.bash == "cat src/a.py" and a2.sends[0].content == "done"


def test_actions_from_inline_xml_and_not_from_markdown_or_narration():
    t = traj(
        "agent1",
        1,
        [
            xml_turn("send_message agent2 <<'MSG'\nI'll take src/a.py\nMSG"),
            {"role": "assistant", "content": "```bash\nsend_message agent2 'hi'\n```"},
            {
                "role": "assistant",
                "content": '[Makes bash tool call with {"command": "ls"} as arguments]',
            },
            {"role": "assistant", "content": "I will now send my plan to agent2."},
        ],
    )
    tl = agent_timeline(t)
    assert tl.n_assistant_turns == 4
    assert [a.command for a in tl.actions] == [
        "send_message agent2 <<'MSG'\nI'll take src/a.py\nMSG"
    ]
    assert tl.actions[0].sends[0].content == "I'll take src/a.py"


def test_runtime_extra_actions_win_over_content():
    turn = runtime_turn("ls", content=to_qwen_xml("send_message agent2 'x'"))
    assert [a.command for a in agent_actions(traj("agent1", 1, [turn]))] == ["ls"]
    # recorded as executing nothing (a format error): no action even though content has XML
    empty = runtime_turn(content=to_qwen_xml("send_message agent2 'x'"))
    assert agent_actions(traj("agent1", 1, [empty])) == []


def test_received_messages_inbox_and_wait_replies():
    t = traj(
        "agent2",
        2,
        [
            inbox("agent1", "Plan: I'll take src/a.py, you take src/b.py"),
            runtime_turn("send_message agent1 'ok'"),
            {"role": "user", "content": "Message sent to agent1.", "extra": {"returncode": 0}},
            runtime_turn("send_message --wait agent1 'which tests?'"),
            {
                "role": "user",
                "content": "Message sent to agent1.\n[Message from agent1]: tests/test_a.py",
                "extra": {"returncode": 0},
            },
            inbox("agent9", "not my partner"),
            runtime_turn("cat src/b.py"),
        ],
    )
    tl = agent_timeline(t, partner="agent1")
    assert [(r.sender, r.via, r.before_action) for r in tl.received] == [
        ("agent1", "inbox", 0),
        ("agent1", "observation", 2),
    ]
    assert tl.received[1].body == "tests/test_a.py"
    assert [a.received_before for a in tl.actions] == [1, 1, 2]
    assert tl.received_before(0) == 1 and tl.received_before(3) == 2
    # without an explicit partner, anyone but the agent itself counts
    assert len(agent_timeline(t).received) == 3


def test_own_messages_and_the_task_text_are_not_received():
    t = traj("agent1", 1, [runtime_turn("ls"), obs("[Message from agent1]: echo of myself")])
    t["messages"][1]["content"] = "[Message from agent2]: quoted inside the task"
    assert agent_timeline(t).received == ()


def test_split_command_forms():
    heredoc = "send_message agent2 <<'EOF'\nPlan: I'll do src/a.py\nEOF"
    assert split_command(heredoc)[0][0].content == "Plan: I'll do src/a.py"
    sends, bash, err = split_command('cd /repo && send_message agent2 "x"; cat src/a.py')
    assert [m.content for m in sends] == ["x"] and bash == "cd /repo; cat src/a.py" and err is None
    assert split_command("grep -rn send_message src/") == ((), "grep -rn send_message src/", None)
    sends, bash, err = split_command("send_message agent2 'unterminated")
    assert sends == () and bash == "" and "unterminated" in err


def test_cooperbench_v2_recorded_actions_and_send_message_tool():
    """CooperBench's mini_swe_agent_v2 records extra.actions as dicts, and may offer a
    structured `send_message` tool next to `bash`."""
    recorded = {
        "role": "assistant",
        "content": None,
        "extra": {
            "actions": [
                {
                    "tool_name": "send_message",
                    "tool_call_id": "c0",
                    "recipient": "agent2",
                    "content": "I'll do src/a.py",
                },
                {"tool_name": "bash", "tool_call_id": "c1", "command": "ls"},
            ],
            "timestamp": 3.5,
        },
    }
    unrecorded = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c2",
                "type": "function",
                "function": {
                    "name": "send_message",
                    "arguments": json.dumps(
                        {"recipient": "agent2", "content": "and tests/test_a.py"}
                    ),
                },
            },
            {
                "id": "c3",
                "type": "function",
                "function": {"name": "bash", "arguments": '{"command": "pwd"}'},
            },
        ],
    }
    summary = {"role": "assistant", "content": "Summary: ...", "extra": {"summary": True}}
    tl = agent_timeline(traj("agent1", 1, [recorded, summary, unrecorded]))
    assert tl.n_assistant_turns == 2
    assert [(a.is_send, a.bash) for a in tl.actions] == [
        (True, ""),
        (False, "ls"),
        (True, ""),
        (False, "pwd"),
    ]
    assert [(m.to, m.content, m.wait) for a in tl.actions for m in a.sends] == [
        ("agent2", "I'll do src/a.py", False),
        ("agent2", "and tests/test_a.py", False),
    ]
    assert tl.actions[0].timestamp == 3.5 and [a.turn for a in tl.actions] == [0, 0, 1, 1]
