"""Trajectories, TITO's input: one agent's side of one rejection-sampled pair
(``Trajectory``), read from a CooperBench-layout run (``trajectories_from_run``); its messages
with the steering section stripped (``default_prompt_messages``); and synthetic token captures
(``synthesise_token_capture``: benchmarks, tests, templated teachers posing as native)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coop_dag.agent.actions import BASH_TOOL
from coop_dag.agent.prompts import strip_steering
from coop_dag.eval.runlogs import iter_pairs
from coop_dag.tito.chat import render_ids
from coop_dag.tito.errors import TitoError
from coop_dag.tito.tokens import TokenVocab, first_diff


@dataclass
class Trajectory:
    """One agent's trajectory of one (rejection-sampled) pair."""

    traj_id: str
    pair_id: str
    repo: str
    task_id: str
    agent_id: str
    messages: list[dict]
    prompt: str = "default"  # "default" | "steering": what the teacher was shown
    model: str = ""

    @classmethod
    def from_dict(cls, traj: dict, pair_id: str | None = None) -> Trajectory:
        """A CooperBench trajectory record; ``pair_id`` defaults to ``traj["pair_id"]``."""
        pair_id = pair_id or traj.get("pair_id")
        if not pair_id:
            raise TitoError("trajectory needs a pair_id (e.g. 'repo/task/f1_f2')")
        agent_id = str(traj.get("agent_id") or f"agent{traj.get('feature_id')}")
        return cls(
            traj_id=f"{pair_id}/{agent_id}",
            pair_id=str(pair_id),
            repo=str(traj.get("repo", "")),
            task_id=str(traj.get("task_id", "")),
            agent_id=agent_id,
            messages=list(traj.get("messages") or []),
            prompt=str(traj.get("prompt") or "default"),
            model=str(traj.get("model") or ""),
        )


def trajectories_from_run(
    run_dir: str | os.PathLike, pair_ids: Iterable[str] | None = None
) -> list[Trajectory]:
    """Trajectories of a CooperBench-layout run, restricted to ``pair_ids`` (the
    rejection-sampled pairs) when given. A requested pair that is not in the run raises."""
    wanted = None if pair_ids is None else set(pair_ids)
    out: list[Trajectory] = []
    seen: set[str] = set()
    for pair in iter_pairs(run_dir):
        if wanted is not None and pair.pair_id not in wanted:
            continue
        seen.add(pair.pair_id)
        for name in pair.agent_ids:
            traj = pair.trajectories.get(name)
            if traj is not None:
                out.append(Trajectory.from_dict(traj, pair.pair_id))
    if wanted is not None and wanted - seen:
        raise TitoError(f"pairs not found in run {run_dir}: {', '.join(sorted(wanted - seen))}")
    return out


def default_prompt_messages(messages: Sequence[dict], strip: bool = True) -> list[dict]:
    """``messages`` with the steering section stripped from the first user (instance)
    message; other messages are shared, not copied."""
    out = list(messages)
    if not strip:
        return out
    for i, m in enumerate(out):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                stripped = strip_steering(content)
                if stripped != content:
                    out[i] = {**m, "content": stripped}
            break
    return out


def synthesise_token_capture(
    traj: Trajectory,
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    tools: Sequence[dict] | None = (BASH_TOOL,),
    **template_kwargs: Any,
) -> Trajectory:
    """A deep copy of ``traj`` whose assistant turns carry the ``token_capture`` an engine
    serving ``tokenizer``'s template would have returned: ``prompt_token_ids`` = the turn's
    prompt rendered as the teacher saw it (steering included), ``output_token_ids`` = the
    template's own rendering of the assistant message (what follows the prompt in the
    rendering of ``messages[:k+1]``) through the first end-of-turn id."""
    out = copy.deepcopy(traj)
    eot = TokenVocab(tokenizer).eot_id
    tools = list(tools) if tools else None
    for i, m in enumerate(out.messages):
        if m.get("role") != "assistant":
            continue
        prompt = render_ids(
            tokenizer, out.messages[:i], tools, chat_template=chat_template, **template_kwargs
        )
        full = render_ids(
            tokenizer,
            out.messages[: i + 1],
            tools,
            add_generation_prompt=False,
            chat_template=chat_template,
            **template_kwargs,
        )
        if full[: len(prompt)] != prompt:
            raise TitoError(
                f"{traj.traj_id}: the template does not render turn {i} as a continuation of "
                f"its prompt (first difference at {first_diff(full, prompt)}); cannot "
                "synthesise a capture"
            )
        output = full[len(prompt) :]
        if eot in output:
            output = output[: output.index(eot) + 1]
        extra = m.setdefault("extra", {})
        extra["token_capture"] = {"prompt_token_ids": prompt, "output_token_ids": output}
    return out
