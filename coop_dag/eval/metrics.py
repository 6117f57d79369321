"""The plan-first behaviour metrics, scored over rollout logs in CooperBench's layout, with n,
Wilson and cluster-bootstrap intervals; plus CooperBench's own success rates from eval.json.

Two rule sets, chosen by name (`coop-dag score RUN_DIR --rules s6|seed-v5`):

**"s6" (default)** -- the text of the seed report's §6 ("Behavioral evaluation"):

- plan_first (per pair): each agent's first action is a send_message *to its partner* (a
  message to itself, or to anyone else, does not count), and each receives the partner's
  message before it runs any other bash. A `--wait` reply counts as received, and so does a
  partner message that arrived before the agent's first action (responder form); a reply to a
  `--wait` does not cover bash issued in the same turn as the wait.
- plan_content (per pair): each agent's first message to its partner has >= 2 distinct
  keywords of {plan, split, you, I'll, first, step} and names >= 1 *real task entity*:

  * a path that exists in the task's base repository (when the dataset is reachable) or is
    listed in a "Files Modified" section of the pair's task texts. `/workspace/repo/src/a.py`,
    `./src/a.py` and `src/a.py` are the same path; a trailing part of a real path
    (`a.py`, `pkg/a.py` for `src/pkg/a.py`) names that file; `src/pkg/nothere.py` is invented.
  * a function or class name that the feature text names (`_convert()`, `Option`,
    `Parser.parse()`, `def _metavar` in a code block) or that the task's files define
    (`def`/`class` in the base version of the files the features name). In the message it must
    read as code: contain `_`, a capital or a digit (`_convert`, `Option`), or sit in backticks
    or before `(` (`parse()`), so the English word "parse" is not the function `parse`.

  Example: with Files Modified `src/argkit/spec.py`, "Plan: I'll take `/workspace/repo/src/
  argkit/spec.py`, you take the formatter" passes; "Plan: I'll take src/argkit/options.py, you
  the rest" does not (no such file, and nothing else real is named).
- follow_through (per agent): the entities of the agent's *own* first message to its partner
  (its plan; never the partner's). It follows through when >= 1 of the *real* ones is touched
  by a *successful* command of its own after that message and within the horizon -- the bash
  references the path (`cat src/pkg/a.py`, `sed -i ... /workspace/repo/src/pkg/a.py`) or the
  name (`grep -n _convert ...`) and its observation has return code 0 and no "No such file" --
  or is changed by its final patch (`agent<fid>.patch`: a file in the diff, or a name on a
  changed line or hunk header). `ls src/pkg/a.py` answered by "No such file or directory"
  (return code 2) does not count; `grep -n flag src/pkg/b.py` on the partner's file does not
  count when only the partner planned `src/pkg/b.py`.
- edit_follow_through (per agent, stricter): the agent's final patch modifies >= 1 file that its
  own plan named (any named path, by the same normalisation). Reading is not editing.

**"seed-v5"** -- the seed's v5-tf evaluation script, to reproduce the report's numbers:
plan_first accepts a first send_message to anyone; plan_content needs 2 keywords and any string
the shared path regex (`coop_dag.util.paths`) matches; follow_through takes `plan_files` = the union
of both agents' first-message paths and counts any later bash that references one, whether or not
it succeeded. edit_follow_through is computed as under "s6" (the seed had no such metric).

Under both rules an agent with no assistant turns, or a missing or malformed trajectory, makes
its pair score 0 on every metric (reason "missing assistant turns"); an unreadable or malformed
file is also an *error*: listed in `errors`, counted in `n_errors` and reported as a warning.

Statistics: every rate has its n, a Wilson 95 % interval (`<m>_ci95`) and a cluster-bootstrap
95 % interval (`<m>_cluster_ci95`). Agents sharing a feature see the same task text (each feature
sits in several pairs), so they are not independent: the bootstrap resamples *features*
(`<repo>/<task>/f<k>`) with replacement; an agent weighs its feature's draw count, a pair the
product of its two features' counts (the pigeonhole bootstrap for units that belong to two
clusters). `paired_deltas` bootstraps the difference between two runs scored on the same pairs
with one shared resample per replicate. Seeded (`seed`, default 0), so reruns give the same
interval. The intervals and paired deltas are computed in `coop_dag.eval.stats`. The seed-bar
checks use the point estimate; `bar_checks` also says whether the cluster interval's lower
bound clears the bar.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from coop_dag.eval.entities import (
    TaskEntities,
    cached_base_tree,
    dataset_roots,
    find_task_dir,
    task_entities,
    task_text,
)
from coop_dag.eval.plan_checks import (
    score_follow_through,
    score_plan,
)
from coop_dag.eval.runlogs import (
    AgentTimeline,
    PairLog,
    agent_timeline,
    iter_pairs,
    self_id,
    trajectory_problem,
)
from coop_dag.eval.stats import (
    AGENT_METRICS,
    EVAL_METRICS,
    N_BOOT,
    PAIR_METRICS,
    metric_bootstrap,
    wilson_interval,
)

log = logging.getLogger(__name__)

MISSING_TURNS = "missing assistant turns"
RULES = ("s6", "seed-v5")
DEFAULT_RULES = "s6"

PLAN_FIRST_MIN_RATE = 0.70
PLAN_CONTENT_MIN_RATE = 0.70
FOLLOW_THROUGH_MIN_RATE = 0.60
THRESHOLDS = {
    "plan_first": PLAN_FIRST_MIN_RATE,
    "plan_content": PLAN_CONTENT_MIN_RATE,
    "follow_through": FOLLOW_THROUGH_MIN_RATE,
}
RATE_KEYS = tuple(f"{m}_rate" for m in (*PAIR_METRICS, *AGENT_METRICS, *EVAL_METRICS))


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


# -- eval.json -------------------------------------------------------------------------------


# merge.status values that are outcomes of the agents' work (anything else, e.g. "error", is
# an evaluation failure): clean / identical merge cleanly, conflicts / missing_input do not.
MERGE_OUTCOMES = {"clean": True, "identical": True, "conflicts": False, "missing_input": False}


def eval_outcome(data: dict | None) -> dict | None:
    """CooperBench success from eval.json: `both_passed` and `merge_clean` (None when unknown).

    Reads CooperBench's shape (`both_passed`, `merge.status`, written by it and by
    `coop_dag.eval.evaluate`) and the quickstart's (`overall_success`, `merged.merge_conflict`).
    An eval whose `error` is an infrastructure failure scores no test outcome (its tests did not
    run: no environment, no pytest summary) and no merge outcome unless one was recorded; an
    `error` that reports a merge conflict still counts as a conflict and a fail.
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
    if error and merge_clean is not False:  # tests that did not run are no outcome
        both = None
    return {"both_passed": both, "merge_clean": merge_clean, "error": error}


# -- scoring -----------------------------------------------------------------------------------


def _check_rules(rules: str) -> str:
    if rules not in RULES:
        raise ValueError(f"unknown metric rules {rules!r}: choose one of {', '.join(RULES)}")
    return rules


def _checked_trajectories(pair: PairLog) -> tuple[list[dict | None], list[str]]:
    """The pair's trajectories in agent order (None: missing or malformed) and its errors."""
    errors = list(pair.errors)
    trajs: list[dict | None] = []
    for a in pair.agent_ids:  # in-memory pairs skip load_trajectory: check them here too
        t = pair.trajectories.get(a)
        problem = trajectory_problem(t) if t is not None else None
        if problem:
            errors.append(f"{pair.pair_id} {a}: {problem}")
            t = None
        trajs.append(t)
    return trajs, errors


def _unscored_row(pair: PairLog, rules: str, errors: list[str]) -> dict[str, Any]:
    """A pair's row with every metric failed and no evidence yet (what a pair with a missing
    agent keeps)."""
    ids = pair.agent_ids
    return {
        "pair_id": pair.pair_id,
        "repo": pair.repo,
        "task_id": pair.task_id,
        "features": [pair.feature_a, pair.feature_b],
        "rules": rules,
        "plan_first": False,
        "plan_content": False,
        "follow_through": {a: False for a in ids},
        "n_follow_through": 0,
        "edit_follow_through": {a: False for a in ids},
        "n_edit_follow_through": 0,
        "plan_files": [],
        "task_entities": None,
        "reason": None,
        "reasons": [],
        "agents": {},
        "eval": eval_outcome(pair.eval),
        "errors": errors,
    }


def _timelines(
    trajs: list[dict | None], ids: list[str]
) -> tuple[list[AgentTimeline | None], list[set[str]]]:
    """Each agent's timeline (None without a trajectory) and the ids its partner goes by (the
    partner's agent id, and the self id its log gives, if any; never the agent's own)."""
    timelines: list[AgentTimeline | None] = []
    partner_sets: list[set[str]] = []
    for n, traj in enumerate(trajs):
        other = trajs[1 - n]
        me = (self_id(traj) if traj else None) or ids[n]
        partners = {ids[1 - n]} | ({self_id(other)} if other and self_id(other) else set())
        partners.discard(me)
        partner_sets.append(partners)
        timelines.append(agent_timeline(traj, partners) if traj is not None else None)
    return timelines, partner_sets


def _pair_entities(
    pair: PairLog,
    trajs: list[dict | None],
    dataset: str | Path | None,
    mirror_dir: str | Path | None,
) -> TaskEntities:
    """The s6 rules' real task entities of the pair: its agents' task texts, the dataset's
    feature texts and the task's base repository where they can be found."""
    task_dir = find_task_dir(pair.repo, pair.task_id, dataset_roots(dataset))
    mirror = mirror_dir or os.environ.get("COOP_DAG_MIRROR_DIR")
    return task_entities(
        [task_text(t) for t in trajs], task_dir, mirror, (pair.feature_a, pair.feature_b)
    )


def score_pair(
    pair: PairLog,
    rules: str = DEFAULT_RULES,
    *,
    dataset: str | Path | None = None,
    mirror_dir: str | Path | None = None,
    horizon: int | None = None,
) -> dict[str, Any]:
    """One pair's metrics and the evidence behind them, under `rules` ("s6" or "seed-v5").

    The pair's repository is looked up in `dataset_roots(dataset)` for the base-repository
    check; `horizon` limits follow_through to the agents' first `horizon` assistant turns
    (None: the whole trajectory, i.e. the rollout's own step limit)."""
    _check_rules(rules)
    ids = pair.agent_ids
    trajs, errors = _checked_trajectories(pair)
    result = _unscored_row(pair, rules, errors)
    timelines, partner_sets = _timelines(trajs, ids)
    missing = [ids[n] for n, tl in enumerate(timelines) if tl is None or tl.n_assistant_turns == 0]
    for n, tl in enumerate(timelines):
        result["agents"][ids[n]] = {
            "feature_id": result["features"][n],
            "status": (trajs[n] or {}).get("status"),
            "n_assistant_turns": tl.n_assistant_turns if tl else 0,
            "n_actions": len(tl.actions) if tl else 0,
        }
    if missing:
        result["reason"] = MISSING_TURNS
        result["reasons"] = [f"{a}: {MISSING_TURNS}" for a in missing]
        return result

    entities = TaskEntities()
    if rules == "s6":
        entities = _pair_entities(pair, trajs, dataset, mirror_dir)
        result["task_entities"] = {
            "sources": list(entities.sources),
            "n_files": len(entities.files),
            "n_names": len(entities.names),
        }

    reasons: list[str] = []
    pf, pc, plans, plan_indexes = [], [], [], []
    for n, tl in enumerate(timelines):
        assert tl is not None
        plan, action, fields, why = score_plan(
            tl, ids[n], ids[1 - n], partner_sets[n], entities, rules
        )
        pf.append(fields["plan_first"])
        pc.append(fields["plan_content"])
        plans.append(plan)
        plan_indexes.append(action.index if action is not None else None)
        reasons += why
        result["agents"][ids[n]].update(fields)
    result["plan_files"] = list(dict.fromkeys(p for plan in plans for p in plan.paths))
    for n, tl in enumerate(timelines):
        assert tl is not None
        fields, why = score_follow_through(
            tl, ids[n], plans[n], plan_indexes[n], pair.patches.get(ids[n]),
            rules=rules, plan_files=result["plan_files"], horizon=horizon,
        )  # fmt: skip
        result["follow_through"][ids[n]] = fields["follow_through"]
        result["edit_follow_through"][ids[n]] = fields["edit_follow_through"]
        result["agents"][ids[n]].update(fields)
        # `reason(s)` explain the seed's three metrics; edit_follow_through has its own field.
        reasons += [why] if why else []
    result["plan_first"] = all(pf)
    result["plan_content"] = all(pc)
    result["n_follow_through"] = sum(result["follow_through"].values())
    result["n_edit_follow_through"] = sum(result["edit_follow_through"].values())
    result["reasons"] = reasons
    result["reason"] = reasons[0] if reasons else None
    return result


def _counts(rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    n_pf = sum(r["plan_first"] for r in rows)
    n_pc = sum(r["plan_content"] for r in rows)
    n_ft = sum(r["n_follow_through"] for r in rows)
    n_eft = sum(r.get("n_edit_follow_through", 0) for r in rows)
    n_agents = sum(len(r["follow_through"]) for r in rows)
    return {
        "n_pairs": n,
        "plan_first_rate": _rate(n_pf, n),
        "plan_content_rate": _rate(n_pc, n),
        "follow_through_rate": _rate(n_ft, n_agents),
        "edit_follow_through_rate": _rate(n_eft, n_agents),
        "n_plan_first": n_pf,
        "n_plan_content": n_pc,
        "n_follow_through_agents": n_ft,
        "n_edit_follow_through_agents": n_eft,
        "n_agents": n_agents,
    }


def summarise(
    rows: list[dict],
    errors: list[str] | None = None,
    *,
    rules: str = DEFAULT_RULES,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """The `summary` block for scored pairs: every rate (`RATE_KEYS`) with its n, Wilson 95 %
    interval (`<m>_ci95`) and cluster-bootstrap interval (`<m>_cluster_ci95`, features as
    clusters); CooperBench success rates over the pairs with a usable eval.json; the seed-bar
    checks (point estimate, and whether the cluster interval's lower bound clears the bar)."""
    s: dict[str, Any] = {"rules": rules, "rate_keys": list(RATE_KEYS), **_counts(rows)}
    s["plan_first_ci95"] = list(wilson_interval(s["n_plan_first"], s["n_pairs"]))
    s["plan_content_ci95"] = list(wilson_interval(s["n_plan_content"], s["n_pairs"]))
    s["follow_through_ci95"] = list(wilson_interval(s["n_follow_through_agents"], s["n_agents"]))
    s["edit_follow_through_ci95"] = list(
        wilson_interval(s["n_edit_follow_through_agents"], s["n_agents"])
    )
    evals = [r["eval"] for r in rows if r.get("eval")]
    both = [e["both_passed"] for e in evals if e["both_passed"] is not None]
    clean = [e["merge_clean"] for e in evals if e["merge_clean"] is not None]
    s["n_evaluated"] = len(both)
    s["n_eval_errors"] = sum(1 for e in evals if e["error"])
    # pairs left out of both_passed because their evaluation failed (listed, not scored)
    s["eval_error_pairs"] = {
        r["pair_id"]: str(r["eval"]["error"])[:300]
        for r in rows
        if r.get("eval") and r["eval"]["error"] and r["eval"]["both_passed"] is None
    }
    s["n_both_passed"] = sum(both)
    s["both_passed_rate"] = _rate(sum(both), len(both)) if both else None
    s["both_passed_ci95"] = list(wilson_interval(sum(both), len(both))) if both else None
    s["n_merge_evaluated"] = len(clean)
    s["n_merge_clean"] = sum(clean)
    s["merge_clean_rate"] = _rate(sum(clean), len(clean)) if clean else None
    s["merge_clean_ci95"] = list(wilson_interval(sum(clean), len(clean))) if clean else None
    for m in (*PAIR_METRICS, *AGENT_METRICS, *EVAL_METRICS):
        boot = metric_bootstrap(rows, m, n_boot=n_boot, seed=seed)
        s[f"{m}_n"] = boot["n"]
        s[f"{m}_n_clusters"] = boot["n_clusters"]
        s[f"{m}_cluster_ci95"] = boot["ci95"]
    s["bootstrap"] = {"n_boot": n_boot, "seed": seed, "cluster": "feature (<repo>/<task>/f<k>)"}
    s["n_errors"] = len(errors or [])
    s["thresholds"] = {f"{m}_rate": bar for m, bar in THRESHOLDS.items()}
    s["bar_checks"] = {
        m: {
            "rate": s[f"{m}_rate"],
            "threshold": bar,
            "passes": s[f"{m}_rate"] >= bar,  # the seed's check: the point estimate
            "lower_bound": (s[f"{m}_cluster_ci95"] or [None])[0],
            "lower_bound_clears_bar": bool(
                s[f"{m}_cluster_ci95"] and s[f"{m}_cluster_ci95"][0] >= bar
            ),
        }
        for m, bar in THRESHOLDS.items()
    }
    return s


def score_pairs(
    pair_logs: Iterable[PairLog],
    rules: str = DEFAULT_RULES,
    *,
    dataset: str | Path | None = None,
    mirror_dir: str | Path | None = None,
    horizon: int | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score in-memory pair logs: `{summary, per_pair, per_task, errors}` (the seed's
    metrics.json shape, extended). Errors are unreadable or malformed files (and in-memory
    trajectories without `messages`): each is counted in `summary.n_errors` and passed to
    `warn` (default: this module's logger at WARNING)."""
    _check_rules(rules)
    rows = [
        score_pair(p, rules, dataset=dataset, mirror_dir=mirror_dir, horizon=horizon)
        for p in pair_logs
    ]
    rows.sort(key=lambda r: r["pair_id"])
    errors = [e for r in rows for e in r["errors"]]
    for error in errors:
        (warn or log.warning)(error)
    bases: dict[str, str] = {}  # which base repositories the s6 check read, for the summary
    if rules == "s6":
        roots = dataset_roots(dataset)
        mirror = mirror_dir or os.environ.get("COOP_DAG_MIRROR_DIR")
        for r in rows:
            task_dir = find_task_dir(r["repo"], r["task_id"], roots)
            tree = cached_base_tree(task_dir, str(mirror) if mirror else None) if task_dir else None
            if tree is not None:
                bases[f"{r['repo']}/{r['task_id']}"] = tree.source
    per_task: dict[str, dict] = {}
    for key in dict.fromkeys(f"{r['repo']}/{r['task_id']}" for r in rows):
        task_rows = [r for r in rows if f"{r['repo']}/{r['task_id']}" == key]
        per_task[key] = {**_counts(task_rows), "pairs": [r["pair_id"] for r in task_rows]}
    summary = summarise(rows, errors, rules=rules, n_boot=n_boot, seed=seed)
    summary["base_repositories"] = bases
    return {
        "summary": summary,
        "per_pair": rows,
        "per_task": per_task,
        "errors": errors,
    }


def score_run(run_dir: str | Path, rules: str = DEFAULT_RULES, **kw: Any) -> dict[str, Any]:
    """Score every pair of a run directory in CooperBench's layout (RunLogError if it is not);
    keyword arguments as for `score_pairs`."""
    _check_rules(rules)
    result = score_pairs(iter_pairs(run_dir), rules, **kw)
    result["run_dir"] = str(Path(run_dir))
    return result


def main_score(
    run_dir: str | Path,
    out: str | Path | None = None,
    stream: IO[str] | None = None,
    *,
    rules: str = DEFAULT_RULES,
    dataset: str | Path | None = None,
) -> dict[str, Any]:
    """`coop-dag score RUN_DIR [--rules s6|seed-v5] [--dataset DIR] [--out FILE]`: print the
    summary as JSON (every rate under its `<metric>_rate` key); write the full result (summary,
    per_pair, per_task, errors) to `out` if given; one `warning:` line on stderr per error.
    Returns the full result."""

    def warn(error: str) -> None:
        print(f"warning: {error}", file=sys.stderr)

    if dataset is not None and not Path(dataset).is_dir():
        raise ValueError(f"--dataset {dataset}: not a directory")
    result = score_run(run_dir, rules, dataset=dataset, warn=warn)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    stream = stream or sys.stdout
    stream.write(json.dumps(result["summary"], indent=2) + "\n")
    failed = result["summary"].get("eval_error_pairs") or {}
    if failed:  # said apart from the rates: these pairs' tests never ran
        print(
            f"{len(failed)} pair(s) not scored for both_passed (evaluation error):",
            file=sys.stderr,
        )
        for pid, cause in failed.items():
            print(f"  {pid}: {cause}", file=sys.stderr)
    return result
