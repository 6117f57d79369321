"""The fault suite (``pytest -m faults``; docs/reliability.md lists the guarantees and the test
proving each). A failure is never scored as behaviour:

- infrastructure faults -- a model server or Redis-protocol server that dies mid-run -- fail
  the rollout asset naming the pairs and the cause; no rate of that run is recorded; the
  pairs that finished stay as they are and a rerun finishes only the others;
- behavioural faults of an agent -- a hanging command, an output flood, a context overflow,
  malformed tool calls, a partner that exits -- are scored outcomes: the pair completes, is
  scored, and a rerun has nothing to redo.

Other tests of the suite live beside the code they exercise (marked ``faults``): the killed
rollout run (test_teacher_assets), the killed training run (test_train), the adapter swap
that is a no-op (test_serving).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import threading
from pathlib import Path

import dagster as dg
import pytest
import serve_helpers as H

from coop_dag import BUNDLED_DATASET
from coop_dag.agent import rollouts as rollouts_module
from coop_dag.agent.episode import pair_dir
from coop_dag.agent.loop import AgentLimits
from coop_dag.agent.models import ModelResponse
from coop_dag.agent.redis_server import EmbeddedRedis, RedisGone, RedisLink
from coop_dag.agent.rollouts import RolloutErrors, raise_on_errors, rollout_pairs, summarise_run
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.eval.metrics import score_run

try:
    from tests.agent.test_agent import (
        ScriptedModel,
        assistant_turns,
        call,
        needs_bwrap,
        submit,
        text,
        wait_for,
    )
except ImportError:  # tests/ imported as a package
    from tests.agent.test_agent import (
        ScriptedModel,
        assistant_turns,
        call,
        needs_bwrap,
        submit,
        text,
        wait_for,
    )

pytestmark = pytest.mark.faults

PAIRS = {p.pair_id: p for p in discover_pairs(BUNDLED_DATASET)}
LRU = [PAIRS[f"lrucache_task/103/f{a}_f{b}"] for a, b in ((1, 2), (1, 3), (1, 4), (2, 3))]
LIMITS = AgentLimits(max_steps=6, command_timeout=10.0, wait_timeout=5.0)


def _files(run_dir: Path, pairs) -> dict:
    """Every file of the given pairs' directories: content, mtime and inode (a pair that is
    redone or rewritten changes at least one)."""
    out = {}
    for pair in pairs:
        for f in sorted(pair_dir(run_dir, pair).rglob("*")):
            if f.is_file():
                st = f.stat()
                out[f] = (f.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def _roll(pairs, factory, run_dir, *, limits=LIMITS, redis_url=None, logs=None, **kw):
    return rollout_pairs(
        pairs,
        factory,
        run_dir,
        steering=False,
        limits=limits,
        model_name="scripted",
        redis_url=redis_url,
        concurrency=1,
        log=(logs.append if logs is not None else lambda _m: None),
        **kw,
    )


# --------------------------------------------------------------------------------------
# dead model server
# --------------------------------------------------------------------------------------


def _published(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("coop/*/*/f*_f*") if p.is_dir())


def test_a_dead_model_server_fails_the_base_rollouts_and_scores_nothing(
    vllm_server, tmp_path, monkeypatch
):
    """The model server stops answering (connections refused, as a killed server's are) once
    the first of the two held-out pairs is published: `base_student_metrics` fails naming the
    other pair and the cause, and no score reaches the lineage store (the report would compare
    the student against a "base" that scored 0 because its server was gone). The rerun, with
    a live server, runs only that pair, leaves the first as it was and records the score."""
    from assets import evaluation
    from assets.tasks import task_pool
    from resources.dataset import DatasetResource
    from resources.lineage import LineageResource
    from resources.rollout import RolloutResource
    from resources.serving import ServingResource

    variant = evaluation.VARIANTS["templated"]
    monkeypatch.setitem(
        evaluation.VARIANTS, "templated", dataclasses.replace(variant, student=H.STUDENT)
    )
    lineage = LineageResource(path=str(tmp_path / "lineage.duckdb"))
    runs = tmp_path / "runs"
    run_dir = runs / "base" / H.STUDENT

    def materialize(url: str):
        return dg.materialize(
            [task_pool, evaluation.base_student_metrics],
            partition_key="templated",
            resources={
                "dataset": DatasetResource(subset="smoke"),
                "rollout": RolloutResource(runs_dir=str(runs), concurrency=1),
                "serving": ServingResource(url=url),
                "lineage": lineage,
            },
            raise_on_error=False,
        )

    with H.FaultProxy(vllm_server.url) as proxy:
        done = threading.Event()

        def kill_after_the_first_pair() -> None:
            while not done.is_set():
                if _published(run_dir):
                    proxy.die()
                    return
                done.wait(0.05)

        killer = threading.Thread(target=kill_after_the_first_pair, daemon=True)
        killer.start()
        try:
            result = materialize(proxy.url)
        finally:
            done.set()
            killer.join()
    assert not result.success
    published = {d: json.loads((d / "result.json").read_text()) for d in _published(run_dir)}
    [first] = [d for d, r in published.items() if r["status"] == "Completed"]
    [dead] = [d for d, r in published.items() if r["status"] == "Error"]
    assert "Connection error" in published[dead]["error"]  # recorded as an error, kept apart
    first_id = "/".join(first.parts[-3:])
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failure.event_specific_data
    text = str(data.error) + str(data.user_failure_data)
    assert "1 of 2 pairs ended on an infrastructure error" in text and "ModelError" in text
    [errored] = [p for p in ("webroute_task/107/f1_f2", "mdrender_task/108/f1_f2") if p in text]
    assert errored != first_id  # the pair that finished is not an error
    # no score of this run reached the lineage store
    assert not (tmp_path / "lineage.duckdb").exists() or (
        lineage.store.latest("base_student_metrics", "templated") is None
    )
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in first.rglob("*") if f.is_file()}

    again = materialize(vllm_server.url)  # the server is back
    assert again.success
    after = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in first.rglob("*") if f.is_file()}
    assert after == before  # the finished pair was not run again
    assert len(_published(run_dir)) == 2
    metrics = again.output_for_node("base_student_metrics")
    assert metrics["summary"]["n_pairs"] == 2 and metrics["summary"]["n_errors"] == 0
    recorded = lineage.store.latest("base_student_metrics", "templated")
    assert recorded is not None and recorded["data_version"] == metrics["data_version"]


# A stand-in for vLLM's HTTP surface serving `tiny-qwen3` (health, models), started by the
# serving resource exactly as vLLM is (under the lease watcher, in its own session): the
# process kills below are real; only the engine is small. The asset-level fault above runs
# the real vLLM.
STAND_IN = """
import http.server, json, sys
port, root = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"ok" if self.path == "/health" else json.dumps(
            {"data": [{"id": "tiny-qwen3", "root": root, "parent": None}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
print("stand-in serving on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def stand_in_serving(tmp_path, monkeypatch):
    """A ServingResource whose server command is the stand-in (yields it; stops the server)."""
    import socket
    import sys

    from coop_dag.serving.settings import ServeSettings
    from coop_dag.util.containers import Command
    from resources.serving import ServingResource

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-c", STAND_IN, str(port), str(H.student().model_dir)]
    monkeypatch.setattr(
        ServeSettings, "command", lambda self, model, served_model_name=None: Command(tuple(argv))
    )
    resource = ServingResource(
        port=port, state_dir=str(tmp_path / "serving"), vllm_python=sys.executable,
        startup_timeout=30.0,
    )  # fmt: skip
    yield resource
    resource.stop()


def _server_process(watcher: int) -> int:
    """The server under its lease watcher (the watcher's child)."""
    children = Path(f"/proc/{watcher}/task/{watcher}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _gone(pid: int) -> bool:
    return not _alive(pid)


def test_the_serving_resource_restarts_a_server_it_started_that_died(stand_in_serving):
    """Each stage's `serving.ensure` checks the server: one that was SIGKILLed since the last
    stage is started again, and the log says it died, with its last lines."""
    from coop_dag.serving.vllm import VllmEngine

    first = stand_in_serving.ensure(H.STUDENT)
    assert first.started
    server = _server_process(first.pid)
    os.kill(server, signal.SIGKILL)  # the OOM killer's way
    wait_for(lambda: _gone(first.pid), "the lease watcher to exit with its server", 15)
    logs: list[str] = []
    second = stand_in_serving.ensure(H.STUDENT, log=logs.append)
    assert second.started and second.pid != first.pid and second.url == first.url
    assert VllmEngine(second.url).health()
    said = "\n".join(logs)
    assert f"the server pid {first.pid} at {first.url}" in said and "has died" in said
    assert "stand-in serving on" in said  # its log's last lines
    # the next stage reuses the healthy server
    assert not stand_in_serving.ensure(H.STUDENT).started


def test_a_wedged_server_is_killed_and_started_again(stand_in_serving, monkeypatch):
    """A server that answered once and now does not answer /health (SIGSTOPped: it holds its
    port and accepts nothing) is killed, stray processes included, and started again."""
    from coop_dag.serving import server as serving

    monkeypatch.setattr(serving, "HUNG_GRACE_S", 2.0)
    first = stand_in_serving.ensure(H.STUDENT)
    server = _server_process(first.pid)
    os.kill(server, signal.SIGSTOP)
    logs: list[str] = []
    second = stand_in_serving.ensure(H.STUDENT, log=logs.append)
    assert second.started and second.pid != first.pid
    assert _gone(server) and _gone(first.pid)
    assert any("was up but does not answer /health" in line for line in logs)


def test_a_server_that_cannot_start_again_fails_with_its_log_tail(stand_in_serving, monkeypatch):
    """The server died and its restart fails (here: the command exits at once): the stage
    fails with the new attempt's log tail, not a silent retry loop."""
    import sys

    from coop_dag.serving.errors import ServingError
    from coop_dag.serving.settings import ServeSettings
    from coop_dag.util.containers import Command

    first = stand_in_serving.ensure(H.STUDENT)
    os.kill(_server_process(first.pid), signal.SIGKILL)
    wait_for(lambda: _gone(first.pid), "the lease watcher to exit with its server", 15)
    broken = (
        sys.executable,
        "-c",
        "import sys; print('RuntimeError: no KV cache fits'); sys.exit(1)",
    )
    monkeypatch.setattr(
        ServeSettings, "command", lambda self, model, served_model_name=None: Command(broken)
    )
    with pytest.raises(ServingError, match="no KV cache fits"):
        stand_in_serving.ensure(H.STUDENT)


# --------------------------------------------------------------------------------------
# dead Redis-protocol server
# --------------------------------------------------------------------------------------


def _killer(server_of, killed: dict):
    """A scripted turn that SIGKILLs the Redis-protocol server (the real process) and waits
    until it is gone, then submits: the agents' next Redis call fails."""
    lock = threading.Lock()

    def turn(_messages) -> ModelResponse:
        with lock:
            if not killed:
                server = server_of()
                killed.update(pid=server.pid, url=server.url)
                os.kill(server.pid, signal.SIGKILL)
                wait_for(lambda: server.exited or not _alive(killed["pid"]), "Redis to die")
        return submit()

    return turn


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


@needs_bwrap
def test_a_killed_embedded_redis_is_restarted_for_the_remaining_pairs(tmp_path, monkeypatch):
    """The embedded server is SIGKILLed while the second of four pairs runs: that pair is an
    error naming Redis, the server is restarted (on another port) for pairs 3 and 4, which
    complete; the run is not scorable; a rerun redoes only pair 2 and leaves the others."""
    links: list[RedisLink] = []

    class Recording(RedisLink):
        def __enter__(self):
            links.append(self)
            return super().__enter__()

    monkeypatch.setattr(rollouts_module, "RedisLink", Recording)
    killed: dict = {}
    started: list[str] = []

    def factory(pair, feature, me, partner):
        if me == "agent1":
            started.append(pair.pair_id)
        if pair == LRU[1] and me == "agent1":
            return ScriptedModel([_killer(lambda: links[-1]._server, killed)])
        return ScriptedModel([submit()])

    run_dir, logs = tmp_path / "run", []
    summary = _roll(LRU, factory, run_dir, logs=logs)
    assert started == [p.pair_id for p in LRU]  # every pair ran once, in order
    assert not _alive(killed["pid"])
    assert summary["statuses"] == {"Completed": 3, "Error": 1} and summary["missing"] == []
    assert list(summary["errors"]) == [LRU[1].pair_id]
    cause = summary["errors"][LRU[1].pair_id]
    assert cause.startswith("RedisError: the Redis-protocol server failed during the pair")
    assert killed["url"].rsplit(":", 1)[1] in cause  # the dead server's port
    [restart] = summary["redis_restarts"]
    assert f"server at {killed['url']} died; restarted at redis://" in restart
    assert restart in logs
    new_url = re.search(r"restarted at (\S+)", restart).group(1)
    assert new_url != killed["url"]  # another port: the dying pair could not reach it
    assert links[0]._server is None  # the restarted server was stopped with the run
    with pytest.raises(RolloutErrors, match="1 of 4 pairs ended on an infrastructure") as err:
        raise_on_errors(summary)  # the asset fails: nothing of this run is scored
    assert LRU[1].pair_id in str(err.value) and "Redis" in str(err.value)

    done = [LRU[0], LRU[2], LRU[3]]
    before = _files(run_dir, done)
    assert len(before) == 3 * 7  # 2 trajectories, 2 patches, conversation, result, eval
    started.clear()
    again = _roll(LRU, factory, run_dir)
    assert started == [LRU[1].pair_id] and again["ran_now"] == 1
    assert again["statuses"] == {"Completed": 4} and again["errors"] == {}
    assert again["redis_restarts"] == []
    raise_on_errors(again)
    assert _files(run_dir, done) == before  # completed pairs untouched
    assert not list(run_dir.glob("coop/*/*/.f*"))  # no staging directory left


@needs_bwrap
def test_a_configured_redis_that_dies_stops_the_run_at_once(tmp_path, redis_url):
    """A configured server (``redis_url``: a cluster's Redis) that dies cannot be restarted
    from here: no further pair starts, the run fails at once naming the server; the pair that
    was running is recorded as an error; a rerun against a live server finishes the rest."""
    external = EmbeddedRedis().start()  # stands in for somebody else's Redis
    killed: dict = {}
    started: list[str] = []

    def factory(pair, feature, me, partner):
        if me == "agent1":
            started.append(pair.pair_id)
        if pair == LRU[1] and me == "agent1":
            return ScriptedModel([_killer(lambda: external, killed)])
        return ScriptedModel([submit()])

    run_dir = tmp_path / "run"
    try:
        with pytest.raises(RedisGone, match=re.escape(external.url)) as gone:
            _roll(LRU, factory, run_dir, redis_url=external.url)
    finally:
        external.stop()
    assert "no further pair was started" in str(gone.value)
    assert started == [LRU[0].pair_id, LRU[1].pair_id]  # pairs 3 and 4 never started
    summary = summarise_run(LRU, run_dir)
    assert summary["statuses"] == {"Completed": 1, "Error": 1, "missing": 2}
    assert list(summary["errors"]) == [LRU[1].pair_id]
    assert "RedisError" in summary["errors"][LRU[1].pair_id]
    assert summary["missing"] == [LRU[2].pair_id, LRU[3].pair_id]
    with pytest.raises(RolloutErrors, match="3 of 4 pairs"):
        raise_on_errors(summary)

    before = _files(run_dir, [LRU[0]])
    started.clear()
    again = _roll(LRU, factory, run_dir, redis_url=redis_url)  # a live server
    assert started == [p.pair_id for p in LRU[1:]] and again["ran_now"] == 3
    assert again["statuses"] == {"Completed": 4}
    raise_on_errors(again)
    assert _files(run_dir, [LRU[0]]) == before


# --------------------------------------------------------------------------------------
# behavioural faults: outcomes of the agent, scored, never errors
# --------------------------------------------------------------------------------------


def _never(*_args):
    raise AssertionError("a complete pair was started again")


def _scored_outcome(tmp_path, agent1, *, limits=LIMITS, redis_url=None, agent2=None) -> dict:
    """Roll out a pair whose agent1 is ``agent1`` (the fault; its partner submits, or plays
    ``agent2``) and a clean pair. The fault must be an outcome: both pairs complete, neither is
    an error, both are scored, and a rerun starts nothing and changes no file. Returns the
    faulty agent's trajectory."""
    faulty, clean = LRU[0], LRU[3]

    def factory(pair, feature, me, partner):
        if pair == faulty:
            return agent1 if me == "agent1" else (agent2 or ScriptedModel([submit()]))
        return ScriptedModel([submit()])

    run_dir = tmp_path / "run"
    summary = _roll([faulty, clean], factory, run_dir, limits=limits, redis_url=redis_url)
    assert summary["statuses"] == {"Completed": 2}, summary["errors"]
    assert summary["errors"] == {} and summary["missing"] == []
    raise_on_errors(summary)  # the asset does not fail: this is behaviour
    scored = score_run(run_dir)
    assert scored["summary"]["n_pairs"] == 2 and scored["summary"]["n_errors"] == 0
    assert len(scored["per_pair"]) == 2
    before = _files(run_dir, [faulty, clean])
    again = _roll([faulty, clean], _never, run_dir, limits=limits, redis_url=redis_url)
    assert again["ran_now"] == 0 and _files(run_dir, [faulty, clean]) == before
    return json.loads(
        (pair_dir(run_dir, faulty) / f"agent{faulty.feature_a}_traj.json").read_text()
    )


def _observations(traj: dict) -> list[dict]:
    return [m for m in traj["messages"] if m["role"] == "tool"]


@needs_bwrap
def test_a_hanging_command_is_killed_and_the_episode_goes_on(tmp_path):
    limits = dataclasses.replace(LIMITS, command_timeout=2.0)
    traj = _scored_outcome(
        tmp_path, ScriptedModel([call("echo started; sleep 600"), submit()]), limits=limits
    )
    assert traj["status"] == "Submitted" and traj["steps"] == 2
    [obs] = _observations(traj)[:1]
    assert obs["extra"]["returncode"] == -1
    assert "started" in obs["content"] and "timed out after 2 seconds" in obs["content"]


@needs_bwrap
def test_an_output_flood_is_capped_and_the_episode_goes_on(tmp_path):
    traj = _scored_outcome(
        tmp_path, ScriptedModel([call("yes | head -c 50000000"), submit()])
    )  # 50 MB of output
    assert traj["status"] == "Submitted" and traj["steps"] == 2
    obs = _observations(traj)[0]
    assert obs["extra"]["returncode"] == 0
    assert len(obs["content"]) < 20_000  # head and tail of a capped capture
    assert len(json.dumps(traj)) < 100_000


@needs_bwrap
def test_a_context_overflow_ends_the_agent_as_a_scored_outcome(tmp_path):
    from coop_dag.agent.loop import approx_tokens
    from coop_dag.agent.prompts import render_prompts

    prompts = [
        render_prompts(f.description, "agent1", "agent2", steering=False)
        for p in (LRU[0], LRU[3])
        for f in p.features
    ]
    start = max(
        approx_tokens(
            [{"role": "system", "content": p.system}, {"role": "user", "content": p.instance}]
        )
        for p in prompts
    )
    limits = dataclasses.replace(LIMITS, max_context_tokens=start + 1500)
    model = ScriptedModel([call("seq 1 3000")], repeat_last=True)  # ~14 KB a turn
    traj = _scored_outcome(tmp_path, model, limits=limits)
    assert traj["status"] == "ContextWindowExceeded" and traj["steps"] >= 1
    assert model.calls == traj["steps"]  # the over-long prompt was never sent


@needs_bwrap
def test_malformed_tool_calls_end_the_agent_as_a_scored_outcome(tmp_path):
    def bad_call(arguments: str) -> ModelResponse:
        return ModelResponse(
            content=None,
            tool_calls=[
                {
                    "id": "call_bad",
                    "type": "function",
                    "function": {"name": "bash", "arguments": arguments},
                }
            ],  # fmt: skip
            raw_model="scripted",
        )

    model = ScriptedModel(
        [text("I'll look:\n```bash\nls\n```"), bad_call('{"command": "ls'), bad_call("{}")]
    )
    limits = dataclasses.replace(LIMITS, max_format_errors=3)
    traj = _scored_outcome(tmp_path, model, limits=limits)
    assert traj["status"] == "FormatError" and traj["steps"] == 3
    feedback = [m for m in traj["messages"] if m.get("extra", {}).get("format_error")]
    assert len(feedback) == 3
    assert all(t["extra"]["actions"] == [] for t in assistant_turns(traj["messages"]))


@needs_bwrap
def test_a_partner_that_exits_is_an_outcome_not_an_error(tmp_path):
    """agent2 submits at once; agent1 then messages it (refused, told it has gone) and goes
    on alone to submit."""
    import redis

    with EmbeddedRedis() as server:  # this test's own: its keys are the faulty pair's
        watcher = redis.Redis.from_url(server.url, decode_responses=True)

        def after_partner_exit(_messages) -> ModelResponse:
            wait_for(lambda: any(watcher.scan_iter(match="coop:*:agent2:exited")), "agent2 to exit")
            return call("send_message agent2 'Plan: I take src/lrucache/cache.py. OK?'")

        model = ScriptedModel([after_partner_exit, call("true"), submit()])
        traj = _scored_outcome(tmp_path, model, redis_url=server.url)
        watcher.close()
    assert traj["status"] == "Submitted"
    refused = _observations(traj)[0]
    assert refused["extra"]["returncode"] == 1
    assert "agent2 has exited and can no longer receive messages" in refused["content"]
    notices = [m for m in traj["messages"] if m.get("extra", {}).get("notice") == "partner_exited"]
    assert len(notices) == 1
    conversation = json.loads(
        (pair_dir(tmp_path / "run", LRU[0]) / "conversation.json").read_text()
    )
    assert conversation == []  # the refused message was never delivered
