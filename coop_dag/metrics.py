"""The three plan-first behaviour metrics of the seed report (Appendix §6), scored over rollout
logs in CooperBench's layout, plus CooperBench's own success rates when eval.json is present.

- plan_first (per pair): both agents' first action is a send_message, and each receives a
  message from the other before it runs any bash other than send_message. A `--wait` reply
  counts as received; so does a partner message that arrives before the agent's first action
  (responder form). "Before" means the message was in the agent's context when it issued the
  command: a reply to a `--wait` in the same turn does not cover bash issued in that turn.
- plan_content (per pair): each agent's first send_message body has at least 2 distinct
  keywords of {plan, split, you, I'll, first, step} (case-insensitive, whole words, "I'll"
  with a straight or curly apostrophe) and at least 1 file path matched by the shared regex
  (`coop_dag.paths`).
- follow_through (per agent): plan_files = the paths in both agents' first send_message bodies
  (the union, as in the seed's v5-tf eval). An agent follows through when a bash command of
  its own (the non-send_message part of any action issued after its first send_message)
  references one of them.

An agent with no assistant turns (or a missing/unreadable trajectory) makes its pair score 0 on
all three, with reason "missing assistant turns".
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from coop_dag.paths import extract_paths
from coop_dag.runlogs import (
    AgentTimeline,
    PairLog,
    agent_timeline,
    iter_pairs,
    self_id,
)

MISSING_TURNS = "missing assistant turns"
PLAN_KEYWORDS = ("plan", "split", "you", "I'll", "first", "step")
_KEYWORD_RE = re.compile(r"\b(plan|split|you|first|step|i['\u2019]ll)\b", re.IGNORECASE)
# A "/" that starts an absolute path (not preceded by a path character). The shared regex does
# not match absolute paths, so they are made relative before it runs (see `referenced_files`).
_ABS_SLASH_RE = re.compile(r"(?<![\w./-])/(?=[\w.-])")

PLAN_FIRST_MIN_RATE = 0.70
PLAN_CONTENT_MIN_RATE = 0.70
FOLLOW_THROUGH_MIN_RATE = 0.60


# -- statistics ----------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (default 95 %). n == 0 gives (0, 1)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


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
    paths = extract_paths(_ABS_SLASH_RE.sub(" ", command))
    return [f for f in wanted if any(p == f or p.endswith("/" + f) for p in paths)]


def _first_bash_index(tl: AgentTimeline) -> int:
    return next((a.index for a in tl.actions if a.has_bash), len(tl.actions))


def _agent_plan_first(tl: AgentTimeline, me: str, partner: str) -> tuple[bool, str | None]:
    if not tl.actions:
        return False, f"{me}: no actions"
    first = tl.actions[0]
    if not first.is_send:
        what = f"malformed send_message ({first.error})" if first.error else "bash"
        return False, f"{me}: first action is {what}, not send_message: {_short(first.command)}"
    k = _first_bash_index(tl)
    if tl.received_before(k) == 0:
        if k < len(tl.actions):
            cmd = _short(tl.actions[k].bash)
            return False, f"{me}: ran bash before receiving a message from {partner}: {cmd}"
        return False, f"{me}: never received a message from {partner}"
    return True, None


def _agent_plan_content(
    tl: AgentTimeline, me: str
) -> tuple[bool, list[str], list[str], str | None]:
    msg = tl.first_message
    if msg is None:
        return False, [], [], f"{me}: no send_message"
    body = msg.content or ""
    keywords = plan_keywords(body)
    paths = extract_paths(body)
    if len(keywords) < 2:
        return False, keywords, paths, f"{me}: first message has fewer than 2 plan keywords"
    if not paths:
        return False, keywords, paths, f"{me}: first message names no file path"
    return True, keywords, paths, None


def _agent_follow_through(
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


def _short(text: str, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# -- eval.json -------------------------------------------------------------------------------


# merge.status values that are outcomes of the agents' work (anything else, e.g. "error", is
# an evaluation failure): clean / identical merge cleanly, conflicts / missing_input do not.
MERGE_OUTCOMES = {"clean": True, "identical": True, "conflicts": False, "missing_input": False}


def eval_outcome(data: dict | None) -> dict | None:
    """CooperBench success from eval.json: `both_passed` and `merge_clean` (None when unknown).

    Reads CooperBench's shape (`both_passed`, `merge.status`, written by it and by
    `coop_dag.evaluate`) and the quickstart's (`overall_success`, `merged.merge_conflict`).
    An eval whose `error` is an infrastructure failure (no merge outcome recorded) scores
    neither; an `error` that reports a merge conflict still counts as a conflict and a fail.
    """
    if not isinstance(data, dict):
        return None
    error = data.get("error") or None
    merge = data.get("merge")
    merged = data.get("merged")
    status = merge.get("status") if isinstance(merge, dict) else merge
    merge_clean = MERGE_OUTCOMES.get(status) if isinstance(status, str) else None
    if merge_clean is None and isinstance(merged, dict):
        if isinstance(merged.get("merge_conflict"), bool):
            merge_clean = not merged["merge_conflict"]
    both = data.get("both_passed", data.get("overall_success"))
    both = both if isinstance(both, bool) else None
    if error and merge_clean is None:
        both = None
    return {"both_passed": both, "merge_clean": merge_clean, "error": error}


# -- scoring -----------------------------------------------------------------------------------


def score_pair(pair: PairLog) -> dict[str, Any]:
    """One pair's metrics and the evidence behind them."""
    ids = pair.agent_ids
    trajs = [pair.trajectories.get(a) for a in ids]
    result: dict[str, Any] = {
        "pair_id": pair.pair_id,
        "repo": pair.repo,
        "task_id": pair.task_id,
        "features": [pair.feature_a, pair.feature_b],
        "plan_first": False,
        "plan_content": False,
        "follow_through": {a: False for a in ids},
        "n_follow_through": 0,
        "plan_files": [],
        "reason": None,
        "reasons": [],
        "agents": {},
        "eval": eval_outcome(pair.eval),
        "errors": list(pair.errors),
    }
    timelines: list[AgentTimeline | None] = []
    for n, traj in enumerate(trajs):
        if traj is None:
            timelines.append(None)
            continue
        other = trajs[1 - n]
        me = self_id(traj) or ids[n]
        partners = {ids[1 - n]} | ({self_id(other)} if other and self_id(other) else set())
        partners.discard(me)
        timelines.append(agent_timeline(traj, partners))

    missing = [ids[n] for n, tl in enumerate(timelines) if tl is None or tl.n_assistant_turns == 0]
    for n, tl in enumerate(timelines):
        result["agents"][ids[n]] = {
            "status": (trajs[n] or {}).get("status"),
            "n_assistant_turns": tl.n_assistant_turns if tl else 0,
            "n_actions": len(tl.actions) if tl else 0,
        }
    if missing:
        result["reason"] = MISSING_TURNS
        result["reasons"] = [f"{a}: {MISSING_TURNS}" for a in missing]
        return result

    reasons: list[str] = []
    pf, pc, firsts = [], [], []
    for n, tl in enumerate(timelines):
        assert tl is not None
        ok_first, why_first = _agent_plan_first(tl, ids[n], ids[1 - n])
        ok_content, keywords, paths, why_content = _agent_plan_content(tl, ids[n])
        pf.append(ok_first)
        pc.append(ok_content)
        firsts.append(paths)
        reasons += [r for r in (why_first, why_content) if r]
        k = _first_bash_index(tl)
        msg = tl.first_message
        result["agents"][ids[n]].update(
            {
                "first_action": tl.actions[0].command if tl.actions else None,
                "first_action_is_send": bool(tl.actions and tl.actions[0].is_send),
                "first_bash": tl.actions[k].bash if k < len(tl.actions) else None,
                "received_before_first_bash": tl.received_before(k),
                "first_message": (
                    {"to": msg.to, "body": msg.content, "wait": bool(msg.wait)} if msg else None
                ),
                "plan_keywords": keywords,
                "plan_paths": paths,
                "plan_first": ok_first,
                "plan_content": ok_content,
            }
        )
    plan_files = list(dict.fromkeys(p for paths in firsts for p in paths))
    result["plan_files"] = plan_files
    for n, tl in enumerate(timelines):
        assert tl is not None
        ok, command, why = _agent_follow_through(tl, ids[n], plan_files)
        result["follow_through"][ids[n]] = ok
        result["agents"][ids[n]].update({"follow_through": ok, "follow_through_command": command})
        if why:
            reasons.append(why)
    result["plan_first"] = all(pf)
    result["plan_content"] = all(pc)
    result["n_follow_through"] = sum(result["follow_through"].values())
    result["reasons"] = reasons
    result["reason"] = reasons[0] if reasons else None
    return result


def _counts(rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    n_pf = sum(r["plan_first"] for r in rows)
    n_pc = sum(r["plan_content"] for r in rows)
    n_ft = sum(r["n_follow_through"] for r in rows)
    n_agents = sum(len(r["follow_through"]) for r in rows)
    return {
        "n_pairs": n,
        "plan_first_rate": _rate(n_pf, n),
        "plan_content_rate": _rate(n_pc, n),
        "follow_through_rate": _rate(n_ft, n_agents),
        "n_plan_first": n_pf,
        "n_plan_content": n_pc,
        "n_follow_through_agents": n_ft,
        "n_agents": n_agents,
    }


def summarise(rows: list[dict], errors: list[str] | None = None) -> dict[str, Any]:
    """The `summary` block for scored pairs (rates, counts, Wilson 95 % intervals, CooperBench
    success rates over the pairs with a usable eval.json)."""
    s = _counts(rows)
    s["plan_first_ci95"] = list(wilson_interval(s["n_plan_first"], s["n_pairs"]))
    s["plan_content_ci95"] = list(wilson_interval(s["n_plan_content"], s["n_pairs"]))
    s["follow_through_ci95"] = list(wilson_interval(s["n_follow_through_agents"], s["n_agents"]))
    evals = [r["eval"] for r in rows if r.get("eval")]
    both = [e["both_passed"] for e in evals if e["both_passed"] is not None]
    clean = [e["merge_clean"] for e in evals if e["merge_clean"] is not None]
    s["n_evaluated"] = len(both)
    s["n_eval_errors"] = sum(1 for e in evals if e["error"])
    s["n_both_passed"] = sum(both)
    s["both_passed_rate"] = _rate(sum(both), len(both)) if both else None
    s["both_passed_ci95"] = list(wilson_interval(sum(both), len(both))) if both else None
    s["n_merge_evaluated"] = len(clean)
    s["n_merge_clean"] = sum(clean)
    s["merge_clean_rate"] = _rate(sum(clean), len(clean)) if clean else None
    s["merge_clean_ci95"] = list(wilson_interval(sum(clean), len(clean))) if clean else None
    s["n_errors"] = len(errors or [])
    s["thresholds"] = {
        "plan_first_rate": PLAN_FIRST_MIN_RATE,
        "plan_content_rate": PLAN_CONTENT_MIN_RATE,
        "follow_through_rate": FOLLOW_THROUGH_MIN_RATE,
    }
    return s


def score_pairs(pair_logs: Iterable[PairLog]) -> dict[str, Any]:
    """Score in-memory pair logs: `{summary, per_pair, per_task, errors}` (the seed's
    metrics.json shape, extended). Errors are the pairs' unreadable-file reports."""
    rows = [score_pair(p) for p in pair_logs]
    rows.sort(key=lambda r: r["pair_id"])
    errors = [e for r in rows for e in r["errors"]]
    per_task: dict[str, dict] = {}
    for key in dict.fromkeys(f"{r['repo']}/{r['task_id']}" for r in rows):
        task_rows = [r for r in rows if f"{r['repo']}/{r['task_id']}" == key]
        per_task[key] = {**_counts(task_rows), "pairs": [r["pair_id"] for r in task_rows]}
    return {
        "summary": summarise(rows, errors),
        "per_pair": rows,
        "per_task": per_task,
        "errors": errors,
    }


def score_run(run_dir: str | Path) -> dict[str, Any]:
    """Score every pair of a run directory in CooperBench's layout (RunLogError if it is not)."""
    result = score_pairs(iter_pairs(run_dir))
    result["run_dir"] = str(Path(run_dir))
    return result


def main_score(
    run_dir: str | Path, out: str | Path | None = None, stream: IO[str] | None = None
) -> dict[str, Any]:
    """`coop-dag score RUN_DIR [--out FILE]`: print the summary as JSON; write the full result
    (summary, per_pair, per_task, errors) to `out` if given. Returns the full result."""
    result = score_run(run_dir)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    stream = stream or sys.stdout
    stream.write(json.dumps(result["summary"], indent=2) + "\n")
    for error in result["errors"]:  # unreadable files: scored as missing agents, named here
        print(f"warning: {error}", file=sys.stderr)
    return result
