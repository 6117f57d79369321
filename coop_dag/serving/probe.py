"""The first-turn probe: the seed's synthetic first-turn eval, made a fast regression test.

The seed's most expensive failures (an adapter identical to the base model; a LoRA that had the
behaviour only inside its training prompt distribution; a student writing markdown instead of
tool calls) were all visible in the *first turn* on a held-out prompt, long before a rollout.
This probe renders those first turns exactly as the runtime does and reads them the way the
agent loop and the metrics do:

- prompts: features of the *validation* repositories (whole repos, never seen in training;
  test repositories are left to the held-out rollouts, never probed or tuned on), each rendered
  as the coop agent's turn-0 context -- ``[system, instance]`` from
  :func:`coop_dag.agent.prompts.render_prompts` (the *default* coop prompt, no steering), the bash
  tool in ``tools``, sent to the serving engine (vLLM, the student's chat template) exactly
  as the rollouts send a turn;
- generation: greedy, at most ``max_new_tokens`` (the plan turn is short), on the engine the
  student is evaluated with (:func:`probe_endpoint`);
- scoring, per output: the bash commands :func:`coop_dag.agent.actions.parse_actions` finds (the
  tool calls vLLM's parser returned, else calls written inline), the messages
  `agent.messaging.parser.parse_send_message` finds in them, and whether one of those messages
  goes to the partner and names a path of the task: ``extract_paths(body)`` intersected with
  the feature's task files (its Files Modified list, see :func:`coop_dag.dataset.tasks.task_files`).
  ``rate`` is the share of prompts with such a message (a "hit"); ``tool_call_rate`` and
  ``send_rate`` decompose a miss.

``compare_outputs(base, adapter)`` answers the seed's recommended smoke question -- "is the
adapter's output different from the base model's on the same prompt?" -- which would have caught
its first attempt (token-for-token identical outputs) in seconds.

No Dagster here; the ``lora_checkpoint`` asset calls :func:`probe_endpoint` for base and
adapter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coop_dag import BUNDLED_DATASET
from coop_dag.agent.actions import BASH_TOOL, parse_actions
from coop_dag.agent.messaging.errors import MessagingError
from coop_dag.agent.messaging.parser import parse_send_message
from coop_dag.agent.prompts import render_prompts
from coop_dag.dataset.discovery import discover_tasks
from coop_dag.dataset.tasks import BUNDLED_SPLIT, Feature
from coop_dag.util.paths import extract_paths

# The teacher's plan turn is 115-135 SmolLM2 tokens (prose + the XML tool call + the heredoc);
# a cap below that cuts a good turn before its closing tags and scores it a miss.
DEFAULT_MAX_NEW_TOKENS = 160
DEFAULT_MAX_PROMPTS = 8
AGENTS = ("agent1", "agent2")


class ProbeError(ValueError):
    """The probe cannot run (no held-out feature, bad arguments); the message says why."""


@dataclass(frozen=True)
class ProbeCase:
    """One held-out first-turn prompt."""

    repo: str
    task_id: int
    feature_id: int
    agent_id: str
    partner_id: str
    files: tuple[str, ...]  # the paths the feature.md names
    task: str  # the feature description (the instance message's task)

    @property
    def key(self) -> str:
        return f"{self.repo}/{self.task_id}/feature{self.feature_id}/{self.agent_id}"


@dataclass
class ProbeOutput:
    key: str
    agent_id: str
    text: str
    n_tokens: int
    commands: list[str]
    messages: list[dict]  # [{"to", "content", "wait"}]
    paths: list[str]  # task paths named by a message to the partner
    tool_call: bool  # at least one parseable bash tool call
    send: bool  # at least one parseable send_message (to anyone)
    hit: bool  # a send_message to the partner naming a task path
    error: str | None = None  # a malformed send_message's parse error


@dataclass
class ProbeResult:
    rate: float  # share of prompts with a hit
    n: int
    hits: int
    tool_call_rate: float
    send_rate: float
    outputs: list[ProbeOutput]
    model: str = ""
    adapter: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        values = dict(data)
        values["outputs"] = [ProbeOutput(**o) for o in data.get("outputs", [])]
        return cls(**values)

    def texts(self) -> list[str]:
        return [o.text for o in self.outputs]

    def summary(self) -> dict[str, Any]:
        """Flat facts without the raw outputs (for metadata and lineage)."""
        return {
            "rate": self.rate,
            "n": self.n,
            "hits": self.hits,
            "tool_call_rate": self.tool_call_rate,
            "send_rate": self.send_rate,
            "model": self.model,
            "adapter": self.adapter,
            "max_new_tokens": self.max_new_tokens,
            "wall_time_s": self.wall_time_s,
        }


# --------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------


def held_out_cases(
    dataset_dir: str | os.PathLike = BUNDLED_DATASET,
    held_out_repos: Iterable[str] = BUNDLED_SPLIT.validation,
    *,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    agents: Sequence[str] = AGENTS,
) -> list[ProbeCase]:
    """First-turn cases on repositories kept out of training -- pass the *validation*
    repositories (the default: the bundled ones): every feature of those repos in (repo, task,
    feature) order, the agent id cycling through ``agents`` (agent1, agent2, agent1, ...), at
    most ``max_prompts`` (``<= 0``: all features; with more prompts than features, every
    feature is asked again as the next agent)."""
    repos = list(held_out_repos)
    if not repos:
        raise ProbeError("no held-out repositories given: the probe needs unseen prompts")
    if not agents:
        raise ProbeError("agents must name at least one agent id")
    features: list[Feature] = [
        f
        for t in sorted(discover_tasks(Path(dataset_dir), repos=repos), key=lambda t: t.key)
        for _, f in sorted(t.features.items())
    ]
    if not features:
        raise ProbeError(f"no feature in held-out repositories {repos} of {dataset_dir}")
    total = len(features) if max_prompts <= 0 else max_prompts
    cases = []
    for i in range(total):
        f = features[i % len(features)]
        agent = agents[(i + i // len(features)) % len(agents)]
        partner = next((a for a in AGENTS if a != agent), "agent2")
        cases.append(
            ProbeCase(f.repo, f.task_id, f.feature_id, agent, partner, f.files, f.description)
        )
    return cases


def first_turn_messages(case: ProbeCase) -> list[dict]:
    """The coop agent's context at turn 0: system + instance, default prompt (no steering)."""
    return _first_turn_messages(case.task, case.agent_id, case.partner_id)


def _first_turn_messages(task: str, agent_id: str, partner_id: str) -> list[dict]:
    prompts = render_prompts(task, agent_id, partner_id, steering=False)
    return [
        {"role": "system", "content": prompts.system},
        {"role": "user", "content": prompts.instance},
    ]


def first_turn_request(name: str, task: str, agent_id: str, partner_id: str, max_tokens: int):
    """The one builder of a first-turn request (a :class:`coop_dag.serving.greedy.Probe`): the
    agent's turn-0 context for ``task`` with the bash tool, decoded greedily. Both probes send
    it: this module's held-out cases (`case_probe`) and the served adapter's swap proof
    (`first_turn_probe`)."""
    from coop_dag.serving.greedy import Probe

    return Probe(
        name=name,
        messages=tuple(_first_turn_messages(task, agent_id, partner_id)),
        tools=(BASH_TOOL,),
        max_tokens=max_tokens,
    )


def first_turn_probe(
    dataset_dir: str | os.PathLike | None = None,
    held_out: Sequence[str] | None = None,
    *,
    max_tokens: int | None = None,
):
    """The first turn of agent1 on the first pair (sorted) of ``held_out`` repositories, default
    coop prompt (no steering), with the bash tool: what a served student sees first in a
    rollout, on a repository it never trained on. Defaults: the bundled dataset and its
    *validation* repositories (probes never read test repositories), so the probe is the same
    everywhere; ``max_tokens``: `serving.greedy.DEFAULT_PROBE_MAX_TOKENS`. The swap proof of
    `serving.swap` sends it."""
    from coop_dag.dataset.discovery import discover_pairs
    from coop_dag.serving.errors import ServingError
    from coop_dag.serving.greedy import DEFAULT_PROBE_MAX_TOKENS

    root = Path(dataset_dir) if dataset_dir is not None else BUNDLED_DATASET
    repos = list(held_out) if held_out else list(BUNDLED_SPLIT.validation)
    pairs = discover_pairs(root, repos=repos)
    if not pairs:
        raise ServingError(f"no held-out pair in {root} for repositories {repos}")
    pair = pairs[0]
    return first_turn_request(
        f"first-turn:{pair.pair_id}:agent1",
        pair.features[0].description,
        "agent1",
        "agent2",
        DEFAULT_PROBE_MAX_TOKENS if max_tokens is None else max_tokens,
    )


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------


def score_output(
    text: str, case: ProbeCase, n_tokens: int = 0, tool_calls: list[dict] | None = None
) -> ProbeOutput:
    """Read one first turn as the agent loop and the metrics would: the server's parsed
    ``tool_calls`` first, tool calls written inline in ``text`` otherwise."""
    commands = parse_actions(text, tool_calls)
    messages: list[dict] = []
    error = None
    for command in commands:
        try:
            parsed = parse_send_message(command)
        except MessagingError as err:
            error = str(err)
            continue
        messages.extend({"to": m.to, "content": m.content, "wait": m.wait} for m in parsed.messages)
    files = set(case.files)
    paths: list[str] = []
    for m in messages:
        if m["to"] != case.partner_id:
            continue
        for p in extract_paths(m["content"]):
            if p in files and p not in paths:
                paths.append(p)
    return ProbeOutput(
        key=case.key,
        agent_id=case.agent_id,
        text=text,
        n_tokens=n_tokens,
        commands=commands,
        messages=messages,
        paths=paths,
        tool_call=bool(commands),
        send=bool(messages),
        hit=bool(paths),
        error=error,
    )


def summarise(outputs: list[ProbeOutput], **kw: Any) -> ProbeResult:
    n = len(outputs)
    hits = sum(o.hit for o in outputs)

    def share(k: int) -> float:
        return k / n if n else 0.0

    return ProbeResult(
        rate=share(hits),
        n=n,
        hits=hits,
        tool_call_rate=share(sum(o.tool_call for o in outputs)),
        send_rate=share(sum(o.send for o in outputs)),
        outputs=outputs,
        **kw,
    )


def compare_outputs(base: ProbeResult, adapter: ProbeResult) -> dict[str, Any]:
    """How many prompts the adapter answers differently from the base model (same cases,
    in order). ``differs`` is what the asset check asserts."""
    pairs = list(zip(base.outputs, adapter.outputs, strict=False))
    changed = [a.key for a, b in pairs if a.text != b.text]
    return {
        "differs": bool(changed),
        "n_compared": len(pairs),
        "n_changed": len(changed),
        "changed": changed,
        "rate_base": base.rate,
        "rate_adapter": adapter.rate,
        "rate_delta": adapter.rate - base.rate,
    }


PROBE_VERSION = "1"  # bump when prompts, generation or scoring change (invalidates caches)


def probe_key(student: Any, cases: Sequence[ProbeCase], max_new_tokens: int, engine: str) -> str:
    """What determines a base model's probe result (for caching it across runs): the student's
    weights and template, the cases, the generation settings and the serving engine's
    identity."""
    import hashlib
    import json

    blob = json.dumps(
        {
            "v": PROBE_VERSION,
            "student": getattr(student, "name", str(student)),
            "weights": str(getattr(student, "manifest", {}).get("cache_key") or ""),
            "model_dir": str(getattr(student, "model_dir", "")),
            "tokenizer": getattr(student, "tokenizer_sha256", ""),
            "template": getattr(student, "chat_template_sha256", ""),
            "cases": [[c.key, c.task, list(c.files)] for c in cases],
            "max_new_tokens": max_new_tokens,
            "engine": engine,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# generation: greedy first turns from the serving engine (vLLM), as the rollouts query it
# --------------------------------------------------------------------------------------


def case_probe(case: ProbeCase, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """The case as a :class:`coop_dag.serving.greedy.Probe` (`first_turn_request`)."""
    return first_turn_request(
        f"first-turn:{case.key}", case.task, case.agent_id, case.partner_id, max_new_tokens
    )


def probe_endpoint(
    engine: Any,
    model: str,
    cases: Sequence[ProbeCase],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    adapter: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Greedy first turns of ``model`` (the base id or an adapter name) on a running server
    (a :class:`coop_dag.serving.vllm.VllmEngine` or its URL), scored. The cases are sent at once so
    the engine batches them."""
    from concurrent.futures import ThreadPoolExecutor

    from coop_dag.serving.greedy import run_probe as ask

    if not cases:
        raise ProbeError("no probe cases")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        answers = list(pool.map(lambda c: ask(engine, model, case_probe(c, max_new_tokens)), cases))
    outputs = [
        score_output(a.text, c, len(a.token_ids or []), a.tool_calls)
        for c, a in zip(cases, answers, strict=True)
    ]
    result = summarise(
        outputs,
        model=model,
        adapter=adapter,
        max_new_tokens=max_new_tokens,
        wall_time_s=round(time.monotonic() - started, 2),
    )
    if log:
        log(
            f"probe[{model}]: {result.hits}/{result.n} hits ({100 * result.rate:.0f}%), "
            f"tool calls {100 * result.tool_call_rate:.0f}%, sends {100 * result.send_rate:.0f}% "
            f"in {result.wall_time_s:.0f}s"
        )
    return result
