"""coop_dag.agent.episode: whole pairs, for real — two agents concurrently, each in a bubblewrap
sandbox, messaging through a real Redis-protocol server, evaluated with the task's tests —
driven by scripted models, then the CooperBench log layout read back.

- `test_full_episode_exercises_every_path`: one choreographed pair covering plan message,
  `send_message --wait`, inbox injection, heredoc and `git apply` edits, tool_calls and Qwen
  XML turns, token capture, a format error, escape attempts, a hanging command, the partner
  exiting (notice once, then a failed send), submission, and every log file incl. eval.json.
- faults: a model endpoint that is down (real HTTP, litellm), Redis unreachable, a run
  aborted part-way then resumed, a patch that does not apply.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.agent.episode import (  # noqa: E402
    EpisodeSettings,
    docker_sandbox,
    local_sandbox,
    pair_dir,
    run_pair,
    run_pairs,
    sandbox_factory,
)
from coop_dag.agent.loop import AgentLimits  # noqa: E402
from coop_dag.agent.messaging.errors import MessagingError  # noqa: E402
from coop_dag.agent.models import LiteLLMChatModel  # noqa: E402
from coop_dag.agent.redis_server import connect  # noqa: E402
from coop_dag.agent.rollouts import (  # noqa: E402
    RolloutErrors,
    raise_on_errors,
    rollout_pairs,
    summarise_run,
)
from coop_dag.agent.sandbox.local import LocalSandbox  # noqa: E402
from coop_dag.config.hostcheck import HostRequirementError  # noqa: E402
from coop_dag.dataset.base_repo import checkout_base  # noqa: E402
from coop_dag.dataset.discovery import discover_pairs

try:
    from openai_test_server import OpenAITestServer, Reply
    from test_agent import (
        ScriptedModel,
        assistant_turns,
        call,
        capture_ids,
        needs_bwrap,
        obs_json,
        observation_after,
        submit,
        text,
        wait_for,
        xml,
    )
except ImportError:  # tests/ imported as a package
    from tests.agent.test_agent import (
        ScriptedModel,
        assistant_turns,
        call,
        capture_ids,
        needs_bwrap,
        obs_json,
        observation_after,
        submit,
        text,
        wait_for,
        xml,
    )
    from tests.openai_test_server import OpenAITestServer, Reply

PAIRS = {p.pair_id: p for p in discover_pairs(BUNDLED_DATASET)}
TRAJ_KEYS = {"repo", "task_id", "feature_id", "agent_id", "model", "status", "cost", "steps",
             "messages", "error", "prompt"}  # fmt: skip
RESULT_KEYS = {"repo", "task_id", "features", "setting", "model", "prompt", "started_at",
               "duration_seconds", "status", "error", "agents", "total_steps",
               "total_cost"}  # fmt: skip


@pytest.fixture
def client(redis_url):
    c = connect(redis_url)
    yield c
    c.close()


def settings_for(run_dir: Path, **kw) -> EpisodeSettings:
    limits = kw.pop("limits", None) or AgentLimits(
        max_steps=20, command_timeout=10.0, wait_timeout=20.0
    )
    return EpisodeSettings(run_dir=run_dir, limits=limits, model_name="scripted", **kw)


def gold_file(pair, feature_id: int, path: str, scratch: Path) -> str:
    """The content of `path` after the feature's gold patch, made with git here."""
    repo = scratch / f"gold-{feature_id}"
    checkout_base(pair.task, repo)
    subprocess.run(
        ["git", "apply", str(pair.task.features[feature_id].feature_patch)],
        cwd=repo,
        check=True,
    )
    return (repo / path).read_text()


def inbox_holds(client, agent: str, token: str):
    """Gate: some run's `<agent>` inbox in Redis holds a message containing `token`."""

    def check() -> bool:
        for key in client.scan_iter(match=f"coop:*:{agent}:inbox"):
            if any(token in m for m in client.lrange(key, 0, -1)):
                return True
        return False

    return check


def thread_gone(name: str):
    return lambda: not any(t.name == name and t.is_alive() for t in threading.enumerate())


def is_float_ts(m: dict) -> bool:
    return isinstance(m["extra"]["timestamp"], float)


# --------------------------------------------------------------------------- full episode


@needs_bwrap
def test_full_episode_exercises_every_path(client, tmp_path, request):
    pair = PAIRS["datehelp_task/106/f1_f3"]  # agent1: parsing.py, agent2: humanize.py
    token = uuid.uuid4().hex[:10]
    gold_patch = pair.task.features[1].feature_patch.read_text()
    humanize = gold_file(pair, 3, "src/datehelp/humanize.py", tmp_path)
    run_dir = tmp_path / "run"
    escape_name = f"coop-escape-{token}"
    project_probe = Path.home() / escape_name  # not cwd: a clone may live under /tmp
    for probe in (project_probe, Path(f"/etc/{escape_name}")):  # only if an escape worked
        request.addfinalizer(lambda probe=probe: probe.unlink(missing_ok=True))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connect_py = (
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); "
        "print('CONNECTED')"
    )

    plan = (
        f"Plan ({token}): I'll edit src/datehelp/parsing.py for the new date formats. "
        "Which files will you take?"
    )
    ack = "Agreed: I take src/datehelp/humanize.py, you keep src/datehelp/parsing.py. No overlap."

    def plan_delivered(messages) -> bool:
        return any(m["content"] == f"[Message from agent1]: {plan}" for m in messages)

    def a2_first(messages):
        # the plan is either already injected (it beat agent2's first inbox poll) or pending
        # in Redis, to be injected before the next model call
        pending = inbox_holds(client, "agent2", token)
        wait_for(lambda: plan_delivered(messages) or pending(), "agent1's plan")
        return call("ls src/datehelp", "Let me look at the package.")

    def a2_sees_plan(messages):
        assert plan_delivered(messages)
        return xml(f"send_message agent1 <<'MSG'\n{ack}\nMSG", "Replying with my half.", capture=21)

    a1_idle = threading.Event()  # agent2 may leave only while agent1 sits in this turn

    def a1_hang(messages):
        a1_idle.set()
        wait_for(thread_gone(f"{pair.pair_id}:agent2"), "agent2 to exit")
        return call("echo waiting; sleep 30", "Let me wait for something that never ends.")

    def a1_after_exit(messages):
        assert messages[-1]["extra"].get("notice") == "partner_exited"
        return call("send_message agent2 <<'MSG'\nbye\nMSG")

    agent1 = ScriptedModel(
        [
            call(f"send_message --wait agent2 <<'MSG'\n{plan}\nMSG", "Plan first.", capture=10),
            text("I'll check the status:\n```bash\ngit status\n```"),
            xml(
                f"git apply <<'COOP_PATCH' && git status --short\n{gold_patch}COOP_PATCH",
                "Applying.",
            ),
            call(f"echo pwned > /etc/{escape_name}"),
            call(f"echo pwned > ../{escape_name}; echo pwned > {project_probe}"),
            xml(f"python -c {shlex.quote(connect_py)}"),
            a1_hang,
            a1_after_exit,
            call("git status --short"),
            submit(capture=19),
        ],
        name="agent1",
    )
    agent2 = ScriptedModel(
        [
            a2_first,
            a2_sees_plan,
            call(f"cat > src/datehelp/humanize.py <<'COOP_EOF'\n{humanize}COOP_EOF"),
            lambda messages: wait_for(a1_idle.is_set, "agent1's hang turn") or submit(),
        ],
        name="agent2",
    )
    models = {"agent1": agent1, "agent2": agent2}
    limits = AgentLimits(max_steps=20, command_timeout=1.5, wait_timeout=20.0)
    try:
        result = run_pair(
            pair, lambda p, f, me, partner: models[me], client, settings_for(run_dir, limits=limits)
        )
        # nothing reached the host's listener
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()

    d = pair_dir(run_dir, pair)
    assert d == run_dir / "coop" / "datehelp_task" / "106" / "f1_f3"
    assert sorted(p.name for p in d.iterdir()) == [
        "agent1.patch", "agent1_traj.json", "agent3.patch", "agent3_traj.json",
        "conversation.json", "eval.json", "result.json",
    ]  # fmt: skip
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]  # no staging left

    # result.json
    assert set(result) == RESULT_KEYS
    assert json.loads((d / "result.json").read_text()) == result
    assert result["status"] == "Completed" and result["error"] is None, result["agents"]
    assert result["agents"]["agent1"] == {
        "feature_id": 1, "status": "Submitted", "steps": 10, "cost": 0.0, "error": None
    }  # fmt: skip
    assert result["agents"]["agent2"]["status"] == "Submitted"
    assert result["agents"]["agent2"]["steps"] == 4 and result["total_steps"] == 14
    assert result["features"] == [1, 3] and result["model"] == "scripted"

    # trajectories
    t1 = json.loads((d / "agent1_traj.json").read_text())
    t2 = json.loads((d / "agent3_traj.json").read_text())
    assert TRAJ_KEYS <= set(t1) and TRAJ_KEYS <= set(t2)
    assert (t1["repo"], t1["task_id"], t1["feature_id"], t1["agent_id"]) == (
        "datehelp_task",
        106,
        1,
        "agent1",
    )
    assert (t2["feature_id"], t2["agent_id"], t2["status"]) == (3, "agent2", "Submitted")
    assert t1["model"] == "scripted" and t1["prompt"] == "default"
    m1, m2 = t1["messages"], t2["messages"]
    assert [m["role"] for m in m1[:2]] == ["system", "user"]
    # no compaction: the prompt of turn k is exactly messages[:k]
    turns1 = assistant_turns(m1)
    for k, turn in enumerate(turns1):
        assert agent1.prompts[k] == m1[: m1.index(turn)]
    for m in m1 + m2:
        if "extra" in m:
            assert is_float_ts(m), m
    ts = [m["extra"]["timestamp"] for m in m1 if "extra" in m]
    assert ts == sorted(ts)

    # token capture kept exactly on captured turns only
    assert [("token_capture" in t["extra"]) for t in turns1] == [True] + [False] * 8 + [True]
    assert turns1[0]["extra"]["token_capture"] == capture_ids(10)
    assert turns1[-1]["extra"]["token_capture"] == capture_ids(19)
    turns2 = assistant_turns(m2)
    assert [("token_capture" in t["extra"]) for t in turns2] == [False, True, False, False]
    assert turns2[1]["extra"]["token_capture"] == capture_ids(21)

    # turn 0: plan with --wait, tool_calls form; the reply is in the observation
    assert turns1[0]["tool_calls"][0]["function"]["name"] == "bash"
    obs = observation_after(m1, turns1[0])
    assert obs["role"] == "tool" and obs["tool_call_id"] == turns1[0]["tool_calls"][0]["id"]
    assert obs["content"] == f"Message sent to agent2.\n[Message from agent2]: {ack}"
    assert obs["extra"]["returncode"] == 0

    # agent2: inbox injection before its model call, reply in Qwen XML (no tool_calls)
    inbox = [m for m in m2 if m["role"] == "user" and m["content"].startswith("[Message from")]
    assert [m["content"] for m in inbox] == [f"[Message from agent1]: {plan}"]
    assert inbox[0]["extra"]["inbox"]["from"] == "agent1" and is_float_ts(inbox[0])
    k = m2.index(inbox[0])
    assert m2[k + 1]["role"] == "assistant"  # injected right before a model call ...
    assert agent2.prompts[assistant_turns(m2).index(m2[k + 1])] == m2[: k + 1]  # ... seen by it
    assert "tool_calls" not in turns2[1] and "<function=bash>" in turns2[1]["content"]
    obs = observation_after(m2, turns2[1])
    assert obs["role"] == "user" and obs["content"] == "Message sent to agent1."
    assert obs["extra"]["returncode"] == 0

    # turn 1: a markdown block is a format error, recorded with its content
    assert turns1[1]["content"].endswith("```bash\ngit status\n```")
    assert "tool_calls" not in turns1[1] and turns1[1]["extra"]["actions"] == []
    fb = observation_after(m1, turns1[1])
    assert fb["role"] == "user" and fb["extra"]["format_error"] is True
    assert "markdown code block is not a tool call" in fb["content"]

    # turn 2: `git apply` on a heredoc, inline XML form -> user observation
    obs = observation_after(m1, turns1[2])
    assert obs["role"] == "user" and obs["extra"]["returncode"] == 0
    assert obs_json(obs)["output"] == " M src/datehelp/parsing.py\n"

    # turns 3-5: escape attempts fail inside the sandbox
    for k in (3, 4):
        obs = observation_after(m1, turns1[k])
        assert obs["extra"]["returncode"] != 0
        assert "Read-only file system" in obs["content"] or "No such file" in obs["content"]
    assert not Path(f"/etc/{escape_name}").exists() and not project_probe.exists()
    assert not list(tmp_path.rglob(escape_name))
    obs = observation_after(m1, turns1[5])
    assert obs["extra"]["returncode"] != 0 and "CONNECTED" not in obs["content"]
    assert "ConnectionRefusedError" in obs["content"] or "Network is unreachable" in obs["content"]

    # turn 6: the hanging command is killed at the per-command timeout
    obs = observation_after(m1, turns1[6])
    assert obs["extra"]["returncode"] == -1
    assert obs_json(obs)["output"].startswith("waiting\n")
    assert "timed out after 1.5 seconds" in obs_json(obs)["output"]
    assert obs["extra"]["timestamp"] - turns1[6]["extra"]["timestamp"] < 10

    # partner exit: notice delivered once, before turn 7; then sending to it fails
    notices = [m for m in m1 if m.get("extra", {}).get("notice") == "partner_exited"]
    assert len(notices) == 1 and m1.index(notices[0]) == m1.index(turns1[7]) - 1
    assert "agent2 has finished and exited" in notices[0]["content"]
    obs = observation_after(m1, turns1[7])
    assert obs["extra"]["returncode"] == 1 and "agent2 has exited" in obs["content"]

    # submission: the marker ends the episode
    for turn, msgs in ((turns1[-1], m1), (turns2[-1], m2)):
        obs = observation_after(msgs, turn)
        assert obs["content"] == "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
        assert msgs[-1] is obs

    # patches: each agent's own edits, nothing else
    p1, p3 = (d / "agent1.patch").read_text(), (d / "agent3.patch").read_text()
    assert p1.startswith("diff --git a/src/datehelp/parsing.py b/src/datehelp/parsing.py")
    assert p1.count("diff --git") == 1 and escape_name not in p1
    assert p3.startswith("diff --git a/src/datehelp/humanize.py b/src/datehelp/humanize.py")
    assert p3.count("diff --git") == 1
    assert "def _join(pieces: list[str]) -> str:" in p3

    # conversation.json: what was delivered, float timestamps, in send order
    conv = json.loads((d / "conversation.json").read_text())
    assert [(c["from"], c["to"], c["message"], c["feature_id"]) for c in conv] == [
        ("agent1", "agent2", plan, 1),
        ("agent2", "agent1", ack, 3),
    ]
    assert all(isinstance(c["timestamp"], float) for c in conv)
    assert conv[0]["timestamp"] < conv[1]["timestamp"]

    # eval.json: the gold edits merge cleanly and both features' tests pass
    ev = json.loads((d / "eval.json").read_text())
    assert ev["apply_status"] == {"agent1": "applied", "agent2": "applied"}
    assert ev["merge"]["status"] == "clean", ev
    assert ev["feature1"]["passed"] and ev["feature2"]["passed"], ev
    assert ev["both_passed"] is True


# --------------------------------------------------------------------------- faults


def quick() -> ScriptedModel:
    return ScriptedModel([call("git status --short"), submit()])


@needs_bwrap
def test_model_endpoint_down_is_an_error_and_other_pairs_go_on(client, tmp_path):
    down = PAIRS["datehelp_task/106/f1_f3"]
    other = PAIRS["lrucache_task/103/f1_f3"]
    run_dir = tmp_path / "run"
    md = text("```bash\nls\n```")
    with OpenAITestServer([Reply(content="unused")]) as server:
        server.go_down()
        endpoint = LiteLLMChatModel(
            "openai/coop-test",
            api_base=server.base_url,
            capture_token_ids=True,
            retries=1,
            backoff=0.01,
            timeout=5.0,
        )

        def factory(pair, feature, me, partner):
            if pair == down:
                return endpoint
            # the other pair: agent1 ends on three format errors, agent2 submits
            return ScriptedModel([md, md, md]) if me == "agent1" else quick()

        settings = settings_for(run_dir, evaluate=False)
        results = run_pairs([down, other], factory, client, settings, concurrency=2)
        by_id = {(r["repo"], r["task_id"], tuple(r["features"])): r for r in results}
        bad = by_id[("datehelp_task", 106, (1, 3))]
        good = by_id[("lrucache_task", 103, (1, 3))]
        assert bad["status"] == "Error"
        assert bad["error"].startswith("ModelError: model 'openai/coop-test' at ")
        assert server.base_url in bad["error"] and "failed after 2 attempts" in bad["error"]
        assert {a["status"] for a in bad["agents"].values()} == {"Error"}
        recorded = json.loads((pair_dir(run_dir, down) / "result.json").read_text())
        assert recorded["status"] == "Error" and recorded["error"] == bad["error"]
        traj = json.loads((pair_dir(run_dir, down) / "agent1_traj.json").read_text())
        assert traj["status"] == "Error" and traj["steps"] == 0

        assert good["status"] == "Completed" and good["error"] is None
        assert good["agents"]["agent1"]["status"] == "FormatError"
        assert good["agents"]["agent1"]["steps"] == 3
        assert good["agents"]["agent2"]["status"] == "Submitted"
        good_stat = (pair_dir(run_dir, other) / "result.json").stat()
        # an error is not an outcome: the run's summary names it and refuses to be scored
        # (the FormatError agent of the other pair is behaviour, a scored outcome)
        summary = summarise_run([down, other], run_dir)
        assert list(summary["errors"]) == [down.pair_id] and summary["missing"] == []
        with pytest.raises(RolloutErrors, match="1 of 2 pairs ended on an infrastructure") as e:
            raise_on_errors(summary)
        assert down.pair_id in str(e.value) and "ModelError" in str(e.value)

        # the endpoint comes back: a rerun redoes only the errored pair, through real HTTP
        server.come_up()
        server.script(
            Reply(
                content="Submitting.",
                tool_calls=call("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT").tool_calls,
                prompt_token_ids=[1, 2, 3],
                output_token_ids=[4, 5, 6],
            )
        )
        again = run_pairs([down, other], factory, client, settings, concurrency=2)
    assert [(r["repo"], r["status"]) for r in again] == [("datehelp_task", "Completed")]
    raise_on_errors(summarise_run([down, other], run_dir))  # nothing left to rerun
    assert (pair_dir(run_dir, other) / "result.json").stat().st_mtime_ns == good_stat.st_mtime_ns
    traj = json.loads((pair_dir(run_dir, down) / "agent3_traj.json").read_text())
    [turn] = assistant_turns(traj["messages"])
    assert turn["extra"]["token_capture"] == {
        "prompt_token_ids": [1, 2, 3],
        "output_token_ids": [4, 5, 6],
    }


def test_redis_unreachable_fails_before_any_episode(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    run_dir = tmp_path / "run"
    made = []
    with pytest.raises(MessagingError, match=rf"Redis unreachable at redis://127.0.0.1:{port}"):
        rollout_pairs(
            [PAIRS["datehelp_task/106/f1_f3"]],
            lambda *a: made.append(a) or quick(),
            run_dir,
            steering=False,
            limits=AgentLimits(),
            model_name="scripted",
            redis_url=f"redis://127.0.0.1:{port}",
            log=lambda _: None,
        )
    assert made == [] and not run_dir.exists()


def _fake_docker(bin_dir: Path, info: str) -> None:
    """A docker CLI on PATH whose `info` runs `info` (shell)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(f'#!/bin/sh\n[ "$1" = info ] && {{ {info}; }}\nexit 99\n')
    fake.chmod(0o755)


def test_sandbox_backend_follows_the_choice(tmp_path, monkeypatch):
    assert sandbox_factory("local") is local_sandbox
    with pytest.raises(ValueError, match="COOP_DAG_SANDBOX"):
        sandbox_factory("podman")
    monkeypatch.setenv("PATH", f"{tmp_path / 'up'}:{os.environ['PATH']}")
    _fake_docker(tmp_path / "up", "echo 27.3.1; exit 0")
    assert sandbox_factory("docker") is docker_sandbox
    monkeypatch.setenv("PATH", f"{tmp_path / 'down'}:{os.environ['PATH']}")
    _fake_docker(
        tmp_path / "down",
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2; exit 1",
    )
    with pytest.raises(HostRequirementError) as err:
        sandbox_factory("docker")
    message = str(err.value)
    assert "COOP_DAG_SANDBOX=docker" in message and "needs Docker" in message
    assert "Cannot connect to the Docker daemon" in message
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostRequirementError, match="`docker` is not installed"):
        sandbox_factory("docker")


def test_docker_sandbox_without_a_daemon_fails_before_any_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    _fake_docker(tmp_path / "bin", "echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    run_dir = tmp_path / "run"
    made = []
    with pytest.raises(HostRequirementError, match="COOP_DAG_SANDBOX=docker"):
        rollout_pairs(
            [PAIRS["datehelp_task/106/f1_f3"]],
            lambda *a: made.append(a) or quick(),
            run_dir,
            steering=False,
            limits=AgentLimits(),
            model_name="scripted",
            sandbox="docker",
            log=lambda _: None,
        )
    assert made == [] and not run_dir.exists()


class Abort(BaseException):
    """Stands in for KeyboardInterrupt / SystemExit: not an Exception, so not recorded."""


@needs_bwrap
def test_aborted_run_resumes_only_missing_pairs(client, tmp_path):
    pairs = [PAIRS[f"lrucache_task/103/f{a}_f{b}"] for a, b in ((1, 2), (1, 3), (1, 4), (2, 3))]
    run_dir = tmp_path / "run"
    settings = settings_for(run_dir, evaluate=False)
    started: list[str] = []

    def aborting(pair, feature, me, partner):
        if me == "agent1":
            started.append(pair.pair_id)
        if pair == pairs[2] and me == "agent1":
            return ScriptedModel([call("true"), Abort("killed")])
        return quick()

    with pytest.raises(Abort):
        run_pairs(pairs, aborting, client, settings, concurrency=1)
    assert started == [p.pair_id for p in pairs[:3]]  # the 4th pair never started
    task_dir = run_dir / "coop" / "lrucache_task" / "103"
    assert sorted(p.name for p in task_dir.iterdir()) == ["f1_f2", "f1_f3"]  # nothing half-done
    before = {
        f: (f.read_bytes(), f.stat().st_mtime_ns, f.stat().st_ino)
        for f in task_dir.rglob("*")
        if f.is_file()
    }
    assert len(before) == 12

    rerun = run_pairs(pairs, lambda *a: quick(), client, settings)
    assert sorted((r["features"][0], r["features"][1]) for r in rerun) == [(1, 4), (2, 3)]
    assert all(r["status"] == "Completed" for r in rerun)
    assert sorted(p.name for p in task_dir.iterdir()) == ["f1_f2", "f1_f3", "f1_f4", "f2_f3"]
    after = {f: (f.read_bytes(), f.stat().st_mtime_ns, f.stat().st_ino) for f in before}
    assert after == before  # completed pairs untouched
    for d in task_dir.iterdir():
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "Completed"
        assert {a["status"] for a in result["agents"].values()} == {"Submitted"}
        assert len(list(d.iterdir())) == 6
    # and a third run has nothing left to do
    assert run_pairs(pairs, lambda *a: quick(), client, settings) == []


class GarbledDiff(LocalSandbox):
    """A sandbox whose submitted patch does not apply to the base (as can happen with
    externally produced or truncated patches)."""

    def diff(self, *args, **kw) -> str:
        return (
            "diff --git a/src/lrucache/nope.py b/src/lrucache/nope.py\n"
            "--- a/src/lrucache/nope.py\n+++ b/src/lrucache/nope.py\n"
            "@@ -1,2 +1,2 @@\n-old line\n+new line\n context\n"
        )


@needs_bwrap
def test_patch_that_does_not_apply_is_missing_input(client, tmp_path):
    pair = PAIRS["lrucache_task/103/f1_f3"]

    def sandboxes(pair, root, settings, agent_id):
        if agent_id == "agent1":
            return GarbledDiff(pair.task, root, prefix="agent1-", timeout=10.0)
        return local_sandbox(pair, root, settings, agent_id)

    gold = pair.task.features[3].feature_patch.read_text()
    models = {
        "agent1": quick(),
        "agent2": ScriptedModel([call(f"git apply <<'P'\n{gold}P"), submit()]),
    }
    run_dir = tmp_path / "run"
    result = run_pair(
        pair, lambda p, f, me, o: models[me], client, settings_for(run_dir), make_sandbox=sandboxes
    )
    assert result["status"] == "Completed"
    d = pair_dir(run_dir, pair)
    assert "nope.py" in (d / "agent1.patch").read_text()
    ev = json.loads((d / "eval.json").read_text())
    assert ev["apply_status"] == {"agent1": "failed", "agent2": "applied"}
    assert ev["merge"]["status"] == "missing_input"
    assert ev["both_passed"] is False
