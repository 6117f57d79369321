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
interval. The seed-bar checks use the point estimate; `bar_checks` also says whether the
cluster interval's lower bound clears the bar.
"""

from __future__ import annotations

import builtins
import json
import keyword
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np

from coop_dag import BUNDLED_DATASET
from coop_dag.dataset.base_repo import BaseTree, base_tree
from coop_dag.dataset.tasks import files_modified
from coop_dag.eval.runlogs import (
    AgentTimeline,
    PairLog,
    agent_timeline,
    iter_pairs,
    self_id,
    trajectory_problem,
)
from coop_dag.util.paths import extract_paths

log = logging.getLogger(__name__)

MISSING_TURNS = "missing assistant turns"
RULES = ("s6", "seed-v5")
DEFAULT_RULES = "s6"
PLAN_KEYWORDS = ("plan", "split", "you", "I'll", "first", "step")
_KEYWORD_RE = re.compile(r"\b(plan|split|you|first|step|i['\u2019]ll)\b", re.IGNORECASE)
# A "/" that starts an absolute path (not preceded by a path character). The shared regex does
# not match absolute paths, so they are made relative before it runs.
_ABS_SLASH_RE = re.compile(r"(?<![\w./-])/(?=[\w.-])")

PLAN_FIRST_MIN_RATE = 0.70
PLAN_CONTENT_MIN_RATE = 0.70
FOLLOW_THROUGH_MIN_RATE = 0.60
THRESHOLDS = {
    "plan_first": PLAN_FIRST_MIN_RATE,
    "plan_content": PLAN_CONTENT_MIN_RATE,
    "follow_through": FOLLOW_THROUGH_MIN_RATE,
}
PAIR_METRICS = ("plan_first", "plan_content")
AGENT_METRICS = ("follow_through", "edit_follow_through")
EVAL_METRICS = ("both_passed", "merge_clean")
RATE_KEYS = tuple(f"{m}_rate" for m in (*PAIR_METRICS, *AGENT_METRICS, *EVAL_METRICS))
N_BOOT = 2000
NO_SUCH_FILE = "No such file"


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


def _bootstrap_weights(
    clusters: list[tuple[str, ...]], n_boot: int, seed: int
) -> np.ndarray | None:
    """(replicates, units) weights: draw the distinct clusters with replacement; a unit weighs
    the product of its clusters' draw counts. Replicates whose weights are all 0 are dropped."""
    if not clusters:
        return None
    names = sorted({c for cs in clusters for c in cs})  # sorted: same draw for the same input
    index = {c: i for i, c in enumerate(names)}
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=n_boot)
    weights = np.ones((n_boot, len(clusters)))
    for u, cs in enumerate(clusters):
        for c in cs:
            weights[:, u] *= counts[:, index[c]]
    keep = weights.sum(axis=1) > 0
    return weights[keep] if keep.any() else None


def cluster_bootstrap(
    values: list[float],
    clusters: list[tuple[str, ...]],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval of a mean (a rate, for 0/1 values) under a cluster bootstrap.

    `clusters[i]` names the clusters unit i belongs to (one feature for an agent, two for a
    pair). `{"rate", "n", "n_clusters", "ci95"}`; ci95 is None when there are no units.

    >>> r = cluster_bootstrap([1, 1, 0, 0], [("f1",), ("f1",), ("f2",), ("f2",)])
    >>> r["rate"], r["n"], r["n_clusters"], r["ci95"]
    (0.5, 4, 2, [0.0, 1.0])
    """
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster tuples")
    n = len(values)
    out: dict[str, Any] = {
        "rate": float(np.mean(values)) if n else None,
        "n": n,
        "n_clusters": len({c for cs in clusters for c in cs}),
        "ci95": None,
    }
    weights = _bootstrap_weights(clusters, n_boot, seed)
    if weights is not None:
        reps = weights @ np.asarray(values, dtype=float) / weights.sum(axis=1)
        tail = 100 * (1 - level) / 2
        out["ci95"] = [float(np.percentile(reps, tail)), float(np.percentile(reps, 100 - tail))]
    return out


def metric_units(rows: list[dict], metric: str) -> dict[tuple, tuple[float, tuple[str, ...]]]:
    """{unit key: (0/1 value, clusters)} of a metric over scored pairs: pairs for plan_first,
    plan_content, both_passed, merge_clean (clusters: both features); agents for follow_through
    and edit_follow_through (cluster: the agent's feature). Pairs without a known eval outcome
    are not units of both_passed / merge_clean."""
    units: dict[tuple, tuple[float, tuple[str, ...]]] = {}
    for r in rows:
        task = f"{r['repo']}/{r['task_id']}"
        feats = tuple(f"{task}/f{f}" for f in r.get("features") or ())
        if metric in AGENT_METRICS:
            per_agent = r.get(metric)
            if not isinstance(per_agent, dict):
                continue
            for n, (agent, ok) in enumerate(per_agent.items()):
                cluster = (feats[n],) if n < len(feats) else (f"{task}/{agent}",)
                units[(r["pair_id"], agent)] = (float(bool(ok)), cluster)
        elif metric in EVAL_METRICS:
            value = (r.get("eval") or {}).get(metric)
            if isinstance(value, bool):
                units[(r["pair_id"],)] = (float(value), feats)
        elif metric in r:
            units[(r["pair_id"],)] = (float(bool(r[metric])), feats)
    return units


def metric_bootstrap(rows: list[dict], metric: str, **kw: Any) -> dict[str, Any]:
    """`cluster_bootstrap` of one metric over scored pairs (see `metric_units`)."""
    units = list(metric_units(rows, metric).values())
    return cluster_bootstrap([v for v, _ in units], [c for _, c in units], **kw)


def paired_deltas(
    result: dict,
    baseline: dict,
    metrics: Iterable[str] = (*PAIR_METRICS, *AGENT_METRICS, "both_passed"),
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Delta `result - baseline` per metric over the units both runs scored (same pair ids and
    agents), with a paired cluster bootstrap: each replicate draws one set of features and
    weighs both runs' units with it. `{metric: {delta, rate, baseline_rate, n, n_clusters,
    ci95}}`; a metric neither run has units for is left out.

    `result` and `baseline` are `score_pairs` outputs (or anything with `per_pair`)."""
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        a, b = metric_units(result["per_pair"], m), metric_units(baseline["per_pair"], m)
        keys = [k for k in a if k in b]
        if not keys:
            continue
        va = np.array([a[k][0] for k in keys])
        vb = np.array([b[k][0] for k in keys])
        clusters = [a[k][1] for k in keys]
        entry: dict[str, Any] = {
            "delta": float(va.mean() - vb.mean()),
            "rate": float(va.mean()),
            "baseline_rate": float(vb.mean()),
            "n": len(keys),
            "n_clusters": len({c for cs in clusters for c in cs}),
            "ci95": None,
        }
        weights = _bootstrap_weights(clusters, n_boot, seed)
        if weights is not None:
            reps = (weights @ va - weights @ vb) / weights.sum(axis=1)
            entry["ci95"] = [float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))]
        out[m] = entry
    return out


# -- task entities ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEntities:
    """What counts as a *real* task entity for one pair: paths (base-repository files and the
    features' Files Modified lists) and function/class names (named by the feature texts or
    defined in the task's files). `sources` says where they came from."""

    files: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    sources: tuple[str, ...] = ()

    def resolve_path(self, mention: str) -> list[str]:
        """The real files a mentioned path names (see the module docstring); [] if invented."""
        mention = _normalise_path(mention)
        if not mention:
            return []
        if mention in self.files:
            return [mention]
        return sorted(
            f for f in self.files if mention.endswith("/" + f) or f.endswith("/" + mention)
        )


_WORKSPACE_PREFIXES = ("workspace/repo/", "repo/")


def _normalise_path(path: str) -> str:
    path = path.strip().lstrip("/")
    while path.startswith("./"):
        path = path[2:]
    return path


def mentioned_paths(text: str) -> list[str]:
    """Paths in `text`, absolute ones included (`/workspace/repo/src/a.py` -> `src/a.py`;
    other absolute paths lose their leading "/"). First-seen order, deduplicated."""
    out: dict[str, None] = {}
    for p in extract_paths(_ABS_SLASH_RE.sub(" ", text or "")):
        for prefix in _WORKSPACE_PREFIXES:
            if p.startswith(prefix):
                p = p[len(prefix) :]
                break
        out.setdefault(p, None)
    return list(out)


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_SPAN_RE = re.compile(r"`([^`\n]+)`")
_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_DEF_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)
_CALL_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# Names that are never task entities, even when a feature text writes them as code.
_NOT_ENTITIES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {
    "self", "cls", "Any", "Optional", "Union", "Callable", "List", "Dict", "Tuple", "Set",
    "None", "True", "False",
}  # fmt: skip
# Methods of builtin types: `text.rstrip()` in a feature text names Python, not the task (a task
# file that defines one, e.g. a cache's `get`, still makes it an entity via `defined_names`).
_BUILTIN_METHODS = frozenset(
    n for t in (str, bytes, dict, list, set, tuple, int, float) for n in dir(t)
)


def _code_shaped(name: str) -> bool:
    return "_" in name or any(c.isupper() or c.isdigit() for c in name)


def _class_like(name: str) -> bool:
    return name[0].isupper() and any(c.islower() for c in name[1:])


def _entity_name(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")  # Python's protocol, not the task's
    return (
        len(name) >= 3 and not dunder and name not in _NOT_ENTITIES and name not in _prompt_names()
    )


def _blank_paths(text: str) -> str:
    """`text` with its paths blanked, so a path's parts (`spec` of `src/spec.py`) are not names."""
    text = _ABS_SLASH_RE.sub(" ", text or "")
    for p in sorted(extract_paths(text), key=len, reverse=True):
        text = text.replace(p, " ")
    return text


# A code span that *is* a (dotted) name, or starts with a call of one: `Option`, `Parser.parse()`.
_LEAD_NAME_RE = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*(\(|$)")


def feature_names(text: str) -> set[str]:
    """Function/class names a feature text names: in a `code span`, every called name
    (`_convert()`) and a span that is a name -- capitalised (`Option`, `Parser.parse()` gives
    both), code-shaped (`_metavar`) or called; in a fenced block, `def`/`class` names; in prose, a
    called code-shaped name (`parse_date()`). Builtins, builtin types' methods (`rstrip`),
    keywords and the coop prompt's own names (`send_message`) are not task entities."""
    text = text or ""
    names: set[str] = set()
    for span in _CODE_SPAN_RE.findall(text):
        span = _blank_paths(span)
        names.update(m.group(1) for m in _CALL_RE.finditer(span))
        lead = _LEAD_NAME_RE.match(span)
        if lead:  # in `a.b.c(...)` only `c` is called; `a`, `b` count if they look like names
            parts = lead.group(1).split(".")
            called = lead.group(2) == "("
            names.update(
                part
                for i, part in enumerate(parts)
                if (called and i == len(parts) - 1) or _class_like(part) or "_" in part.strip("_")
            )
    for block in _FENCE_RE.findall(text):
        names.update(m.group(1) for m in _DEF_RE.finditer(block))
    prose = _blank_paths(text)
    names.update(m.group(1) for m in _CALL_RE.finditer(prose) if _code_shaped(m.group(1)))
    return {n for n in names if _entity_name(n) and n not in _BUILTIN_METHODS}


@lru_cache(maxsize=1)
def _prompt_names() -> frozenset[str]:
    """Names our coop prompt itself writes as code (`send_message`, ...): not the task's."""
    from coop_dag.agent.prompts import render_prompts

    try:
        texts = [render_prompts("", "agent1", "agent2", steering=s).instance for s in (0, 1)]
    except Exception:  # noqa: BLE001 -- a broken prompt config must not break scoring
        texts = []
    out = {"send_message", "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"}
    for t in texts:
        for span in _CODE_SPAN_RE.findall(t):
            out.update(_IDENT_RE.findall(span))
    return frozenset(out)


def defined_names(source: str) -> set[str]:
    """`def` and `class` names in a source file."""
    return {n for n in (m.group(1) for m in _DEF_RE.finditer(source or "")) if _entity_name(n)}


def names_in_message(text: str, names: Iterable[str]) -> list[str]:
    """The `names` a message mentions *as code* (see the module docstring), first-seen order."""
    wanted = set(names)
    text = _blank_paths(text)
    in_code = {t for span in _CODE_SPAN_RE.findall(text) for t in _IDENT_RE.findall(span)}
    called = {m.group(1) for m in _CALL_RE.finditer(text)}
    out: dict[str, None] = {}
    for t in _IDENT_RE.findall(text):
        if t in wanted and (_code_shaped(t) or t in in_code or t in called):
            out.setdefault(t, None)
    return list(out)


def _names_in_command(command: str, names: Iterable[str]) -> list[str]:
    tokens = set(_IDENT_RE.findall(command or ""))
    return [n for n in names if n in tokens]


def task_text(traj: dict | None) -> str:
    """The task an agent was given: its first user message (the feature text is in it)."""
    for msg in (traj or {}).get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def dataset_roots(dataset: str | Path | None = None) -> list[Path]:
    """Where task directories are looked up, in order: `dataset`, $COOP_DAG_DATASET, the bundled
    dataset. A pair's repository is found by name (`<root>/<repo>/task<id>/`)."""
    roots = [dataset, os.environ.get("COOP_DAG_DATASET"), BUNDLED_DATASET]
    out: list[Path] = []
    for r in roots:
        if r and Path(r) not in out:
            out.append(Path(r))
    return out


def find_task_dir(repo: str, task_id: str | int, roots: Iterable[Path]) -> Path | None:
    name = str(task_id)
    name = name if name.startswith("task") else f"task{name}"
    return next((Path(r) / repo / name for r in roots if (Path(r) / repo / name).is_dir()), None)


@lru_cache(maxsize=64)
def _base_tree(task_dir: Path, mirror_dir: str | None) -> BaseTree | None:
    return base_tree(task_dir, mirror_dir)


def task_entities(
    texts: Iterable[str],
    task_dir: Path | None = None,
    mirror_dir: str | Path | None = None,
    features: Iterable[int] = (),
) -> TaskEntities:
    """Real entities of a pair from its agents' task texts and, when `task_dir` is given, the
    `features`' feature.md files there and the task's base repository if it is readable
    (bundled `repo/`, or a mirror)."""
    texts = [t for t in texts if t]
    if task_dir is not None:  # the dataset's feature.md files, for logs with no task message
        for k in features:
            md = task_dir / f"feature{k}" / "feature.md"
            if md.is_file():
                texts.append(md.read_text(encoding="utf-8", errors="replace"))
    sources = ["task text"] if texts else []
    files: set[str] = set()
    names: set[str] = set()
    for text in texts:
        files.update(files_modified(text))
        names |= feature_names(text)
    tree = _base_tree(task_dir, str(mirror_dir) if mirror_dir else None) if task_dir else None
    if tree is not None:
        # the kind, not the path: per-pair rows are content-hashed into data versions
        sources.append(f"base repository ({tree.kind})")
        named = set(files)
        for text in texts:
            named |= {f for p in mentioned_paths(text) for f in _resolve(p, tree.files)}
        for path in sorted(named):
            names |= defined_names(tree.read(path) or "")
        files |= tree.files
    return TaskEntities(frozenset(files), frozenset(names), tuple(sources))


def _resolve(mention: str, files: frozenset[str]) -> list[str]:
    return TaskEntities(files=files).resolve_path(mention)


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
    paths = extract_paths(_ABS_SLASH_RE.sub(" ", command))
    return [f for f in wanted if any(p == f or p.endswith("/" + f) for p in paths)]


def _first_bash_index(tl: AgentTimeline) -> int:
    return next((a.index for a in tl.actions if a.has_bash), len(tl.actions))


def _plan_action(tl: AgentTimeline, partners: set[str], rules: str):
    """(action, message) of the agent's plan: its first send_message (seed-v5), or its first
    message to the partner (s6)."""
    for action in tl.actions:
        for msg in action.sends:
            if rules == "seed-v5" or msg.to in partners:
                return action, msg
    return None, None


def _agent_plan_first(
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
    k = _first_bash_index(tl)
    if tl.received_before(k) == 0:
        if k < len(tl.actions):
            cmd = _short(tl.actions[k].bash)
            return False, f"{me}: ran bash before receiving a message from {partner}: {cmd}"
        return False, f"{me}: never received a message from {partner}"
    return True, None


@dataclass
class _Plan:
    body: str | None
    keywords: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # as named (normalised)
    real_paths: list[str] = field(default_factory=list)  # the real files they resolve to
    real_names: list[str] = field(default_factory=list)


def _agent_plan(body: str | None, entities: TaskEntities, rules: str) -> _Plan:
    if body is None:
        return _Plan(None)
    if rules == "seed-v5":
        return _Plan(body, plan_keywords(body), extract_paths(body))
    paths = mentioned_paths(body)
    real = list(dict.fromkeys(f for p in paths for f in entities.resolve_path(p)))
    return _Plan(body, plan_keywords(body), paths, real, names_in_message(body, entities.names))


def _agent_plan_content(plan: _Plan, me: str, rules: str) -> tuple[bool, str | None]:
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


def _agent_follow_through_v5(
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


def _agent_follow_through_s6(
    tl: AgentTimeline,
    me: str,
    plan_index: int | None,
    plan: _Plan,
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
        hits = referenced_files(action.bash, plan.real_paths) + _names_in_command(
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
    changed += _names_in_command(patch_changed_text(patch), plan.real_names) if patch else []
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


def _agent_edit_follow_through(
    me: str, plan: _Plan, patch: str | None
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
    errors = list(pair.errors)
    trajs: list[dict | None] = []
    for a in ids:  # in-memory pairs skip load_trajectory: check them here too
        t = pair.trajectories.get(a)
        problem = trajectory_problem(t) if t is not None else None
        if problem:
            errors.append(f"{pair.pair_id} {a}: {problem}")
            t = None
        trajs.append(t)
    result: dict[str, Any] = {
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
    timelines: list[AgentTimeline | None] = []
    partner_sets: list[set[str]] = []
    for n, traj in enumerate(trajs):
        other = trajs[1 - n]
        me = (self_id(traj) if traj else None) or ids[n]
        partners = {ids[1 - n]} | ({self_id(other)} if other and self_id(other) else set())
        partners.discard(me)
        partner_sets.append(partners)
        timelines.append(agent_timeline(traj, partners) if traj is not None else None)

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
        task_dir = find_task_dir(pair.repo, pair.task_id, dataset_roots(dataset))
        mirror = mirror_dir or os.environ.get("COOP_DAG_MIRROR_DIR")
        entities = task_entities(
            [task_text(t) for t in trajs], task_dir, mirror, (pair.feature_a, pair.feature_b)
        )
        result["task_entities"] = {
            "sources": list(entities.sources),
            "n_files": len(entities.files),
            "n_names": len(entities.names),
        }

    reasons: list[str] = []
    pf, pc, plans, plan_actions = [], [], [], []
    for n, tl in enumerate(timelines):
        assert tl is not None
        action, msg = _plan_action(tl, partner_sets[n], rules)
        plan = _agent_plan(msg.content if msg else None, entities, rules)
        ok_first, why_first = _agent_plan_first(tl, ids[n], ids[1 - n], partner_sets[n], rules)
        ok_content, why_content = _agent_plan_content(plan, ids[n], rules)
        pf.append(ok_first)
        pc.append(ok_content)
        plans.append(plan)
        plan_actions.append(action)
        reasons += [r for r in (why_first, why_content) if r]
        k = _first_bash_index(tl)
        result["agents"][ids[n]].update(
            {
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
        )
    result["plan_files"] = list(dict.fromkeys(p for plan in plans for p in plan.paths))
    for n, tl in enumerate(timelines):
        assert tl is not None
        patch = pair.patches.get(ids[n])
        if rules == "seed-v5":
            ok, command, why = _agent_follow_through_v5(tl, ids[n], result["plan_files"])
            evidence: dict[str, Any] = {"command": command, "patch": []}
        else:
            index = plan_actions[n].index if plan_actions[n] is not None else None
            ok, evidence, why = _agent_follow_through_s6(
                tl, ids[n], index, plans[n], patch, horizon
            )
        ok_edit, edited, why_edit = _agent_edit_follow_through(ids[n], plans[n], patch)
        result["follow_through"][ids[n]] = ok
        result["edit_follow_through"][ids[n]] = ok_edit
        result["agents"][ids[n]].update(
            {
                "follow_through": ok,
                "follow_through_command": evidence["command"],
                "follow_through_patch": evidence["patch"],
                "edit_follow_through": ok_edit,
                "edited_plan_files": edited,
                "edit_follow_through_reason": why_edit,
            }
        )
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
            tree = _base_tree(task_dir, str(mirror) if mirror else None) if task_dir else None
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
