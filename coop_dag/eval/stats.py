"""Statistics of the §6 metrics (`coop_dag.eval.metrics`): each metric's units (a pair, or an
agent) and their clusters (features), Wilson and cluster-bootstrap 95 % intervals, and paired
deltas between two runs scored on the same pairs. See the metrics module's docstring for why
features are the clusters."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

PAIR_METRICS = ("plan_first", "plan_content")
AGENT_METRICS = ("follow_through", "edit_follow_through")
EVAL_METRICS = ("both_passed", "merge_clean")
N_BOOT = 2000


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


def bootstrap_weights(clusters: list[tuple[str, ...]], n_boot: int, seed: int) -> np.ndarray | None:
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
    weights = bootstrap_weights(clusters, n_boot, seed)
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
        weights = bootstrap_weights(clusters, n_boot, seed)
        if weights is not None:
            reps = (weights @ va - weights @ vb) / weights.sum(axis=1)
            entry["ci95"] = [float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))]
        out[m] = entry
    return out
