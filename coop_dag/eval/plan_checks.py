"""The per-agent checks behind the §6 metrics (`coop_dag.eval.metrics`, whose docstring defines
them): each agent's plan message, and whether it planned first, named real entities, followed
through and edited a planned file; plus what a final patch changes. Each check returns its
verdict and, when it fails, the reason."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coop_dag.eval.entities import (
    ABS_SLASH_RE,
    TaskEntities,
    mentioned_paths,
    names_in_command,
    names_in_message,
)
from coop_dag.eval.runlogs import AgentTimeline
from coop_dag.util.paths import extract_paths

PLAN_KEYWORDS = ("plan", "split", "you", "I'll", "first", "step")
_KEYWORD_RE = re.compile(r"\b(plan|split|you|first|step|i['\u2019]ll)\b", re.IGNORECASE)
NO_SUCH_FILE = "No such file"


# -- patches -------------------------------------------------------------------------------------

_DIFF_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.MULTILINE)
_PLUS_FILE_RE = re.compile(r"^(?:\+\+\+|---) (?:[ab]/)?(\S+)", re.MULTILINE)


def patch_files(patch: str | None) -> list[str]:
    """Files a unified/git diff changes (both sides of a rename), first-seen order."""
    out: dict[str, None] = {}
    for m in _DIFF_FILE_RE.finditer(patch or ""):
        out.setdefault(m.group(1), None)
        out.setdefault(m.group(2), None)
    if not out:
        for m in _PLUS_FILE_RE.finditer(patch or ""):
            if m.group(1) != "/dev/null":
                out.setdefault(m.group(1), None)
    return list(out)


def patch_changed_text(patch: str | None) -> str:
    """Changed lines and hunk headers of a diff (where a changed function shows its name)."""
    keep = []
    for line in (patch or "").splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line.startswith(("+", "-")):
            keep.append(line[1:])
        elif line.startswith("@@"):
            keep.append(line.split("@@")[-1])
    return "\n".join(keep)


# -- per-agent predicates --------------------------------------------------------------------


def plan_keywords(text: str) -> list[str]:
    """The distinct plan keywords in `text`, in canonical spelling and first-seen order."""
    found: dict[str, None] = {}
    for m in _KEYWORD_RE.finditer(text or ""):
        word = m.group(1).lower()
        found.setdefault("I'll" if word.startswith("i") else word, None)
    return list(found)


def referenced_files(command: str, files: Iterable[str]) -> list[str]:
    """The `files` a bash command references: a path the shared regex finds in the command
    equals the file or ends with "/<file>" (so `repo/src/a.py` and `/workspace/repo/src/a.py`
    reference `src/a.py`)."""
    wanted = [f for f in files if f]
    if not wanted or not command:
        return []
    paths = extract_paths(ABS_SLASH_RE.sub(" ", command))
    return [f for f in wanted if any(p == f or p.endswith("/" + f) for p in paths)]


def first_bash_index(tl: AgentTimeline) -> int:
    return next((a.index for a in tl.actions if a.has_bash), len(tl.actions))


def plan_action(tl: AgentTimeline, partners: set[str], rules: str):
    """(action, message) of the agent's plan: its first send_message (seed-v5), or its first
    message to the partner (s6)."""
    for action in tl.actions:
        for msg in action.sends:
            if rules == "seed-v5" or msg.to in partners:
                return action, msg
    return None, None


def agent_plan_first(
    tl: AgentTimeline, me: str, partner: str, partners: set[str], rules: str
) -> tuple[bool, str | None]:
    if not tl.actions:
        return False, f"{me}: no actions"
    first = tl.actions[0]
    if not first.is_send:
        what = f"malformed send_message ({first.error})" if first.error else "bash"
        return False, f"{me}: first action is {what}, not send_message: {_short(first.command)}"
    if rules == "s6" and not any(m.to in partners for m in first.sends):
        to = ", ".join(sorted({m.to for m in first.sends}))
        return False, f"{me}: first send_message goes to {to}, not to its partner {partner}"
    k = first_bash_index(tl)
    if tl.received_before(k) == 0:
        if k < len(tl.actions):
            cmd = _short(tl.actions[k].bash)
            return False, f"{me}: ran bash before receiving a message from {partner}: {cmd}"
        return False, f"{me}: never received a message from {partner}"
    return True, None


@dataclass
class Plan:
    body: str | None
    keywords: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # as named (normalised)
    real_paths: list[str] = field(default_factory=list)  # the real files they resolve to
    real_names: list[str] = field(default_factory=list)


def agent_plan(body: str | None, entities: TaskEntities, rules: str) -> Plan:
    if body is None:
        return Plan(None)
    if rules == "seed-v5":
        return Plan(body, plan_keywords(body), extract_paths(body))
    paths = mentioned_paths(body)
    real = list(dict.fromkeys(f for p in paths for f in entities.resolve_path(p)))
    return Plan(body, plan_keywords(body), paths, real, names_in_message(body, entities.names))


def agent_plan_content(plan: Plan, me: str, rules: str) -> tuple[bool, str | None]:
    if plan.body is None:
        to = "send_message" if rules == "seed-v5" else "send_message to its partner"
        return False, f"{me}: no {to}"
    if len(plan.keywords) < 2:
        return False, f"{me}: first message has fewer than 2 plan keywords"
    if rules == "seed-v5":
        if not plan.paths:
            return False, f"{me}: first message names no file path"
        return True, None
    if not plan.real_paths and not plan.real_names:
        named = ", ".join(plan.paths) if plan.paths else "no path"
        return False, f"{me}: first message names no real task file or function ({named})"
    return True, None


def _succeeded(action) -> bool:
    return action.returncode == 0 and NO_SUCH_FILE not in (action.output or "")


def agent_follow_through_v5(
    tl: AgentTimeline, me: str, plan_files: list[str]
) -> tuple[bool, str | None, str | None]:
    first = tl.first_send
    if first is None:
        return False, None, f"{me}: no send_message, so no plan to follow"
    if not plan_files:
        return False, None, f"{me}: no plan files in either first message"
    for action in tl.actions[first.index + 1 :]:
        if action.has_bash and referenced_files(action.bash, plan_files):
            return True, action.bash, None
    return False, None, f"{me}: no later bash command references a plan file"


def agent_follow_through_s6(
    tl: AgentTimeline,
    me: str,
    plan_index: int | None,
    plan: Plan,
    patch: str | None,
    horizon: int | None,
) -> tuple[bool, dict[str, Any], str | None]:
    evidence: dict[str, Any] = {"command": None, "patch": []}
    if plan_index is None:
        return False, evidence, f"{me}: no send_message to its partner, so no plan to follow"
    if not plan.real_paths and not plan.real_names:
        return False, evidence, f"{me}: its own plan names no real task entity"
    failed = None
    for action in tl.actions[plan_index + 1 :]:
        if horizon is not None and action.turn >= horizon:
            break
        if not action.has_bash:
            continue
        hits = referenced_files(action.bash, plan.real_paths) + names_in_command(
            action.bash, plan.real_names
        )
        if not hits:
            continue
        if _succeeded(action):
            evidence["command"] = action.bash
            return True, evidence, None
        failed = failed or action
    changed = [
        f for f in patch_files(patch) if any(f == p or f.endswith("/" + p) for p in plan.real_paths)
    ]
    changed += names_in_command(patch_changed_text(patch), plan.real_names) if patch else []
    if changed:
        evidence["patch"] = changed
        return True, evidence, None
    if failed is not None:
        rc = "no return code" if failed.returncode is None else f"return code {failed.returncode}"
        return (
            False,
            evidence,
            (f"{me}: its commands on its plan's entities failed ({rc}): {_short(failed.bash)}"),
        )
    return False, evidence, f"{me}: no successful command or patch change touches its own plan"


def agent_edit_follow_through(
    me: str, plan: Plan, patch: str | None
) -> tuple[bool, list[str], str | None]:
    if plan.body is None:
        return False, [], f"{me}: no plan message, so no planned file to edit"
    named = mentioned_paths(plan.body)
    if not named:
        return False, [], f"{me}: its plan names no file"
    if patch is None:
        return False, [], f"{me}: no final patch"
    edited = [
        f
        for f in patch_files(patch)
        if any(f == p or p.endswith("/" + f) or f.endswith("/" + p) for p in named)
    ]
    if not edited:
        return False, [], f"{me}: its patch modifies none of the files its plan named"
    return True, edited, None


def score_plan(
    tl: AgentTimeline, me: str, partner: str, partners: set[str], entities: TaskEntities, rules: str
) -> tuple[Plan, Any, dict[str, Any], list[str]]:
    """One agent's plan: (plan, the action that sent it, its evidence fields with the
    plan_first and plan_content verdicts, the reasons it failed them)."""
    action, msg = plan_action(tl, partners, rules)
    plan = agent_plan(msg.content if msg else None, entities, rules)
    ok_first, why_first = agent_plan_first(tl, me, partner, partners, rules)
    ok_content, why_content = agent_plan_content(plan, me, rules)
    k = first_bash_index(tl)
    fields = {
        "first_action": tl.actions[0].command if tl.actions else None,
        "first_action_is_send": bool(tl.actions and tl.actions[0].is_send),
        "first_bash": tl.actions[k].bash if k < len(tl.actions) else None,
        "received_before_first_bash": tl.received_before(k),
        "first_message": (
            {"to": msg.to, "body": msg.content, "wait": bool(msg.wait)} if msg else None
        ),
        "plan_keywords": plan.keywords,
        "plan_paths": plan.paths,
        "plan_real_paths": plan.real_paths,
        "plan_real_names": plan.real_names,
        "plan_first": ok_first,
        "plan_content": ok_content,
    }
    return plan, action, fields, [r for r in (why_first, why_content) if r]


def score_follow_through(
    tl: AgentTimeline,
    me: str,
    plan: Plan,
    plan_index: int | None,
    patch: str | None,
    *,
    rules: str,
    plan_files: list[str],
    horizon: int | None,
) -> tuple[dict[str, Any], str | None]:
    """One agent's follow_through and edit_follow_through: its evidence fields (the two
    verdicts among them) and the reason it failed follow_through."""
    if rules == "seed-v5":
        ok, command, why = agent_follow_through_v5(tl, me, plan_files)
        evidence: dict[str, Any] = {"command": command, "patch": []}
    else:
        ok, evidence, why = agent_follow_through_s6(tl, me, plan_index, plan, patch, horizon)
    ok_edit, edited, why_edit = agent_edit_follow_through(me, plan, patch)
    fields = {
        "follow_through": ok,
        "follow_through_command": evidence["command"],
        "follow_through_patch": evidence["patch"],
        "edit_follow_through": ok_edit,
        "edited_plan_files": edited,
        "edit_follow_through_reason": why_edit,
    }
    return fields, why


def _short(text: str, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
