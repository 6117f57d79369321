"""Two agents on one feature pair, concurrently, each in its own sandbox, messaging through
Redis; results written atomically in CooperBench's log layout:

    <run>/coop/<repo>/<task_id>/f<a>_f<b>/{agent<fid>_traj.json, agent<fid>.patch,
                                           conversation.json, result.json, eval.json}

Agents are named by position as CooperBench does (`agent1` plays feature a, `agent2` feature
b); files by feature id. A pair directory appears only when complete (written to a temp
directory, then renamed), so a killed run leaves finished pairs intact and a rerun finishes
only what is missing; pairs recorded as Error are re-run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from coop_dag.agent.loop import AgentLimits, CoopAgent
from coop_dag.agent.messaging.bus import MessageBus, conversation_records
from coop_dag.agent.models import ChatModel
from coop_dag.agent.prompts import render_prompts
from coop_dag.agent.sandbox.base import Sandbox
from coop_dag.agent.sandbox.docker import DockerSandbox
from coop_dag.agent.sandbox.local import LocalSandbox
from coop_dag.config.hostcheck import check_sandbox
from coop_dag.dataset.tasks import Feature, Pair
from coop_dag.eval.evaluate import evaluate_pair
from coop_dag.util.scratch import owned_tempdir, sweep_stale

# (pair, feature, agent_id, partner_id) -> the model that plays this agent
ModelFactory = Callable[[Pair, Feature, str, str], ChatModel]
# (pair, shared scratch root, settings, agent_id) -> that agent's sandbox
SandboxFactory = Callable[[Pair, Path, "EpisodeSettings", str], Sandbox]


@dataclass
class EpisodeSettings:
    run_dir: Path
    steering: bool = False
    limits: AgentLimits = field(default_factory=AgentLimits)
    evaluate: bool = True
    model_name: str = ""
    sandbox_root: Path | None = None
    mirror_dir: Path | None = None  # local git mirrors for real CooperBench tasks
    allow_unsandboxed: bool = False  # only where bubblewrap is missing, by explicit choice
    # where a real task's tests run: local (its uv environment, bubblewrap) or docker (its
    # image, as CooperBench); the agents' sandbox choice (rollout_pairs passes it)
    eval_backend: str = "local"


SCRATCH_PREFIX = "coop-sbx-"  # a pair's sandboxes and evaluation, under settings.sandbox_root


def pair_dir(run_dir: Path, pair: Pair) -> Path:
    return (
        Path(run_dir)
        / "coop"
        / pair.repo
        / str(pair.task_id)
        / f"f{pair.feature_a}_f{pair.feature_b}"
    )


def pair_is_complete(run_dir: Path, pair: Pair) -> bool:
    result = pair_dir(run_dir, pair) / "result.json"
    if not result.is_file():
        return False
    try:
        return json.loads(result.read_text()).get("status") != "Error"
    except json.JSONDecodeError:
        return False


@contextlib.contextmanager
def pair_lock(run_dir: Path, pair: Pair):
    """Exclusive lock on one pair of a run directory, across processes (released by the kernel
    if the holder dies). Runs sharing a run directory -- e.g. the base-student rollouts of two
    variants with the same student, backfilled in parallel -- take turns on a pair instead of
    deleting each other's staging directory."""
    # <run>/.locks/coop/<repo>/<task>/f<a>_f<b>.lock: beside coop/, outside CooperBench's layout
    lock = pair_dir(Path(run_dir) / ".locks", pair).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def local_sandbox(pair: Pair, root: Path, settings: EpisodeSettings, agent_id: str) -> Sandbox:
    # One shared root: each sandbox hides the root, so agents cannot see each other's checkout.
    return LocalSandbox(
        pair.task,
        root,
        prefix=f"{agent_id}-",
        timeout=settings.limits.command_timeout,
        allow_unsandboxed=settings.allow_unsandboxed,
        mirror_dir=settings.mirror_dir,
    )


def docker_sandbox(pair: Pair, root: Path, settings: EpisodeSettings, agent_id: str) -> Sandbox:
    # CooperBench's task image, one container per agent, no network (as bubblewrap gives).
    return DockerSandbox(
        pair.task,
        container_name=f"coop-dag-{agent_id}-{uuid.uuid4().hex[:8]}",
        timeout=settings.limits.command_timeout,
        network="none",
    )


SANDBOX_BACKENDS: dict[str, SandboxFactory] = {"local": local_sandbox, "docker": docker_sandbox}
SANDBOX_VARIABLE = "COOP_DAG_SANDBOX"  # the profile's switch (coop_dag.config.profiles)


def sandbox_factory(backend: str) -> SandboxFactory:
    """The agents' sandbox for `backend` (local | docker), checked before any pair runs: with
    docker, a Docker daemon must answer (a CLI without a daemon fails here, naming both Docker
    and the variable, instead of as one errored pair after another)."""
    if backend not in SANDBOX_BACKENDS:
        raise ValueError(
            f"sandbox backend {backend!r} ({SANDBOX_VARIABLE}): expected one of "
            f"{', '.join(SANDBOX_BACKENDS)}"
        )
    check_sandbox(backend)
    return SANDBOX_BACKENDS[backend]


def run_pair(
    pair: Pair,
    make_model: ModelFactory,
    client: redis.Redis,
    settings: EpisodeSettings,
    make_sandbox: SandboxFactory = local_sandbox,
) -> dict:
    """Run one pair to completion and write its logs; returns result.json's content. Processes
    sharing `settings.run_dir` must hold :func:`pair_lock` (run_pairs does): this removes any
    earlier attempt's staging directory."""
    final = pair_dir(settings.run_dir, pair)
    stage = _fresh_stage(final)
    started = time.time()
    agents: list[CoopAgent] = []
    sandboxes: list[Sandbox] = []
    scratch = owned_tempdir(SCRATCH_PREFIX, settings.sandbox_root)
    error: str | None = None
    try:
        _add_agents(pair, make_model, client, settings, make_sandbox, scratch, agents, sandboxes)
        _play(pair, agents)
        patches = _write_agent_logs(stage, pair, agents, sandboxes, settings.model_name)
        if settings.evaluate:
            result_eval = evaluate_pair(
                pair,
                patches[pair.feature_a],
                patches[pair.feature_b],
                scratch / "eval",
                mirror_dir=settings.mirror_dir,
                allow_unsandboxed=settings.allow_unsandboxed,
                backend=settings.eval_backend,
            )
            _write_json(stage / "eval.json", result_eval)
    except Exception as err:  # the pair is recorded as Error; other pairs go on
        error = f"{type(err).__name__}: {err}"
        if isinstance(err, redis.RedisError):  # named: "ConnectionError" alone says little
            error = f"RedisError: the Redis-protocol server failed during the pair ({error})"
    except BaseException:  # aborted: publish nothing, leave no staging behind
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        for sandbox in sandboxes:
            sandbox.close()
        shutil.rmtree(scratch, ignore_errors=True)
    result = _pair_result(pair, settings, agents, started, error)
    _write_json(stage / "result.json", result)
    _publish(stage, final)
    return result


def _fresh_stage(final: Path) -> Path:
    """A new staging directory beside `final`, after removing a killed earlier attempt's."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*"):  # a killed earlier attempt's staging
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def _add_agents(
    pair: Pair,
    make_model: ModelFactory,
    client: redis.Redis,
    settings: EpisodeSettings,
    make_sandbox: SandboxFactory,
    scratch: Path,
    agents: list[CoopAgent],
    sandboxes: list[Sandbox],
) -> None:
    """Create both agents, each with its sandbox, model and mailbox, appending to `agents` and
    `sandboxes` as they are made (so the caller closes every sandbox made before a failure)."""
    prefix = f"coop:{uuid.uuid4().hex[:12]}:"
    agent_ids = {pair.feature_a: "agent1", pair.feature_b: "agent2"}
    for feature in pair.features:
        me = agent_ids[feature.feature_id]
        partner = "agent2" if me == "agent1" else "agent1"
        sandbox = make_sandbox(pair, scratch, settings, me)
        sandboxes.append(sandbox)
        agents.append(
            CoopAgent(
                agent_id=me,
                partner_id=partner,
                model=make_model(pair, feature, me, partner),
                sandbox=sandbox,
                bus=MessageBus(client, prefix, me, agents=["agent1", "agent2"]),
                prompts=render_prompts(
                    feature.description, me, partner, steering=settings.steering
                ),
                limits=settings.limits,
            )
        )


def _play(pair: Pair, agents: list[CoopAgent]) -> None:
    """Run the agents concurrently, one thread each, until both end. An agent that was
    aborted (KeyboardInterrupt, SystemExit), not finished, re-raises here: the pair must not
    be published."""
    aborts: list[BaseException] = []

    def play(agent: CoopAgent) -> None:
        try:
            agent.run()
        except BaseException as err:  # KeyboardInterrupt, SystemExit: re-raised below
            aborts.append(err)

    threads = [
        threading.Thread(target=play, args=(a,), name=f"{pair.pair_id}:{a.agent_id}")
        for a in agents
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if aborts:
        raise aborts[0]


def _write_agent_logs(
    stage: Path, pair: Pair, agents: list[CoopAgent], sandboxes: list[Sandbox], model_name: str
) -> dict[int, str]:
    """Each agent's patch and trajectory, and the pair's conversation.json, into `stage`;
    returns the patches by feature id."""
    patches = {}
    for feature, agent, sandbox in zip(pair.features, agents, sandboxes, strict=True):
        fid = feature.feature_id
        patches[fid] = sandbox.diff()
        (stage / f"agent{fid}.patch").write_text(patches[fid])
        _write_json(
            stage / f"agent{fid}_traj.json",
            agent.trajectory(
                repo=pair.repo, task_id=pair.task_id, feature_id=fid, model=model_name
            ),
        )
    sent = [m for a in agents for m in a.bus.sent_messages()]
    ids = {a.agent_id: f.feature_id for a, f in zip(agents, pair.features, strict=True)}
    _write_json(stage / "conversation.json", conversation_records(sent, ids))
    return patches


def _pair_result(
    pair: Pair,
    settings: EpisodeSettings,
    agents: list[CoopAgent],
    started: float,
    error: str | None,
) -> dict:
    """result.json's content: the pair's status (Error if the pair or an agent failed),
    timing, and each agent's status, steps and cost."""
    agent_errors = [a.error for a in agents if a.status == "Error"]
    return {
        "repo": pair.repo,
        "task_id": pair.task_id,
        "features": [pair.feature_a, pair.feature_b],
        "setting": "coop",
        "model": settings.model_name,
        "prompt": "steering" if settings.steering else "default",
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_seconds": round(time.time() - started, 3),
        "status": "Error" if (error or agent_errors) else "Completed",
        "error": error or (agent_errors[0] if agent_errors else None),
        "agents": {
            a.agent_id: {
                "feature_id": f.feature_id,
                "status": a.status,
                "steps": a.steps,
                "cost": a.cost,
                "error": a.error,
            }
            for a, f in zip(agents, pair.features, strict=False)
        },
        "total_steps": sum(a.steps for a in agents),
        "total_cost": sum(a.cost for a in agents),
    }


def _publish(stage: Path, final: Path) -> None:
    """Publish atomically: replace any earlier (errored) attempt in one rename."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:6]}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(stage, final)


def run_pairs(
    pairs: Iterable[Pair],
    make_model: ModelFactory,
    client: redis.Redis | Callable[[], redis.Redis],
    settings: EpisodeSettings,
    *,
    concurrency: int = 2,
    make_sandbox: SandboxFactory = local_sandbox,
    on_progress: Callable[[int, int, Pair, dict], None] | None = None,
) -> list[dict]:
    """Run every pair not already complete; returns the results of the pairs run now.
    ``client``: a Redis client, or a function asked for one before each pair starts
    (:meth:`coop_dag.agent.redis_server.RedisLink.client`: it checks the server, restarts an
    embedded one that died, and raises when a configured one is gone -- which stops the run:
    no further pair starts)."""
    sweep_stale(SCRATCH_PREFIX, settings.sandbox_root)  # sandboxes of a killed earlier run
    todo = [p for p in pairs if not pair_is_complete(settings.run_dir, p)]
    results: list[dict] = []
    stop = threading.Event()
    client_for_pair = (
        client if callable(client) and not isinstance(client, redis.Redis) else lambda: client
    )

    def attempt(pair: Pair) -> dict | None:
        if stop.is_set():
            return None  # the run was aborted: this pair is not started
        try:
            with pair_lock(settings.run_dir, pair):
                if pair_is_complete(settings.run_dir, pair):
                    return None  # another process finished it while this one waited
                return run_pair(pair, make_model, client_for_pair(), settings, make_sandbox)
        except BaseException:  # an abort, or the Redis server gone: stop starting pairs
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(attempt, p): p for p in todo}
        try:
            for done, fut in enumerate(as_completed(futures), 1):
                result = fut.result()
                if result is None:
                    continue
                results.append(result)
                if on_progress:
                    on_progress(done, len(todo), futures[fut], result)
        except BaseException:  # an abort stops the run: queued pairs do not start
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
