"""The distillation report: per variant, the teacher's ceiling, the student, and the controls
run through the same runtime on the same test pairs -- the untrained base, the base with the
steering prompt, and a scripted copier -- as markdown and a PNG plot, read from the lineage
store. Variants that differ only by their seed are grouped (mean and spread).

Every rate carries n and a 95 % interval: the cluster bootstrap over features
(`coop_dag.eval.metrics`) when recorded, else Wilson; the student's delta over the base is the
paired cluster-bootstrap delta. For PF / PC / FT the report says whether the interval's lower
bound clears the seed bar (the seed-bar checks themselves use the point estimate).

A metric is *copyable* when the copier -- which pastes the feature's Files Modified list into a
plan, greps those files and submits without editing -- clears it: its rate reaches the seed bar
or the student's rate. A student's number on a copyable metric shows no more than copying the
task text does.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coop_dag.config.variants import Variant
from coop_dag.eval.lineage import DELTA_PREFIX, LineageStore

METRICS = ("plan_first", "plan_content", "follow_through")  # the seed's three, with bars
REPORT_METRICS = (*METRICS, "edit_follow_through", "both_passed")
SHORT = {
    "plan_first": "PF",
    "plan_content": "PC",
    "follow_through": "FT",
    "edit_follow_through": "edit-FT",
    "both_passed": "both_passed",
}
THRESHOLDS = {"plan_first": 0.7, "plan_content": 0.7, "follow_through": 0.6}
# (role, asset it is recorded by, label in the table)
ROLES = (
    ("teacher", "teacher_validation", "teacher ★"),
    ("student", "behaviour_metrics", "**student**"),
    ("base", "base_student_metrics", "base (untrained)"),
    ("base_steering", "base_steering_metrics", "base + steering"),
    ("copier", "control_copier_metrics", "copier (control)"),
)
# Teacher kinds whose validation rates hold by construction, and why.
BY_CONSTRUCTION = {
    "templated": "the templated teacher's ceiling holds by construction: it plans from the "
    "task text and applies the gold patch",
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _stat(record: Mapping[str, Any] | None, metric: str) -> dict[str, Any] | None:
    """A role's rate, n and 95 % interval (cluster bootstrap, else Wilson), and for the seed's
    three metrics whether the interval's lower bound clears the bar."""
    if not record or metric not in record or record[metric]["value"] is None:
        return None
    r = record[metric]
    ci, kind = (r["cluster_ci95"], "cluster") if r.get("cluster_ci95") else (r["ci95"], "wilson")
    bar = THRESHOLDS.get(metric)
    return {
        "value": r["value"],
        "n": r["n"],
        "ci95": ci,
        "interval": kind if ci else None,
        "lower_clears_bar": None if bar is None or not ci else ci[0] >= bar,
    }


def _copyable(copier: dict | None, student: dict | None) -> dict[str, bool | None]:
    """Per metric: the copier clears it (rate >= the seed bar, or >= the student's rate). A
    metric where the copier scores 0 is never copyable, even when the student scores 0 too
    (nothing was copied); None: no copier result."""
    out: dict[str, bool | None] = {}
    for m in REPORT_METRICS:
        c = (copier or {}).get(m)
        s = (student or {}).get(m)
        if c is None:
            out[m] = None
            continue
        bar = THRESHOLDS.get(m)
        out[m] = (bar is not None and c["value"] >= bar) or (
            s is not None and c["value"] > 0 and c["value"] >= s["value"]
        )
    return out


def seed_groups(variants: Mapping[str, Variant]) -> dict[str, list[str]]:
    """{group label: variant names} of variants identical but for `seed` (and description),
    in seed order; only groups of two or more."""
    by_key: dict[str, list[Variant]] = {}
    for v in variants.values():
        spec = {k: val for k, val in v.raw.items() if k not in ("seed", "description")}
        by_key.setdefault(repr(sorted(spec.items(), key=lambda kv: kv[0])), []).append(v)
    out = {}
    for members in by_key.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda v: (v.seed, v.name))
        out[members[0].name] = [v.name for v in members]
    return out


def report_rows(store: LineageStore, variants: Mapping[str, Variant] | None = None) -> list[dict]:
    """One row per variant with anything recorded: `roles` (teacher, student, base,
    base_steering, copier: per metric `{value, n, ci95, interval, lower_clears_bar}`),
    `deltas` (student - base, paired), `copyable`, the teacher's kind and by-construction
    note, the seed; plus flat `<role>_<metric>` / `delta_<metric>` values and `passes`."""
    stats = {role: store.latest_stats(asset) for role, asset, _ in ROLES}
    teacher_facts = store.latest_facts("teacher_validation")
    names = sorted({v for role in stats.values() for v in role})
    rows = []
    for variant in names:
        roles = {
            role: (
                {m: _stat(stats[role].get(variant), m) for m in REPORT_METRICS}
                if variant in stats[role]
                else None
            )
            for role, _, _ in ROLES
        }
        student_record = stats["student"].get(variant, {})
        deltas = {
            m: {"value": d["value"], "n": d["n"], "ci95": d["cluster_ci95"] or d["ci95"]}
            for m in REPORT_METRICS
            if (d := student_record.get(f"{DELTA_PREFIX}{m}")) and d["value"] is not None
        }
        kind = teacher_facts.get(variant, {}).get("teacher_kind")
        if kind is None and variants and variant in variants:
            kind = variants[variant].teacher_kind
        seed = teacher_facts.get(variant, {}).get("seed")
        if variants and variant in variants:
            seed = variants[variant].seed
        row: dict[str, Any] = {
            "variant": variant,
            "seed": seed,
            "teacher_kind": kind,
            "by_construction": BY_CONSTRUCTION.get(kind or ""),
            "roles": roles,
            "deltas": deltas,
            "copyable": _copyable(roles["copier"], roles["student"]),
        }
        for role, _, _ in ROLES:
            for m in REPORT_METRICS:
                st = (roles[role] or {}).get(m)
                row[f"{role}_{m}"] = None if st is None else st["value"]
        for m in REPORT_METRICS:
            s, b = row[f"student_{m}"], row[f"base_{m}"]
            fallback = s - b if s is not None and b is not None else None
            row[f"delta_{m}"] = deltas[m]["value"] if m in deltas else fallback
        s_role = roles["student"]
        row["passes"] = (
            all(
                row[f"student_{m}"] is not None and row[f"student_{m}"] >= THRESHOLDS[m]
                for m in METRICS
            )
            if s_role
            else None
        )
        rows.append(row)
    return rows


def _cell(st: dict | None) -> str:
    """`83% [67–94] ✓`: rate, 95 % interval, and (PF/PC/FT) whether its lower bound clears the
    seed bar (✓) or not (✗)."""
    if st is None:
        return "–"
    out = _pct(st["value"])
    if st["ci95"]:
        lo, hi = st["ci95"]
        out += f" [{100 * lo:.0f}–{100 * hi:.0f}]"
    if st["lower_clears_bar"] is not None:
        out += " ✓" if st["lower_clears_bar"] else " ✗"
    return out


def _delta_cell(d: dict | None) -> str:
    if d is None:
        return "–"
    out = f"{100 * d['value']:+.0f} pts"
    if d["ci95"]:
        lo, hi = d["ci95"]
        out += f" [{100 * lo:+.0f}, {100 * hi:+.0f}]"
    return out


def _n(role: dict) -> str:
    pairs = next((role[m]["n"] for m in ("plan_first", "plan_content") if role.get(m)), None)
    agents = next(
        (role[m]["n"] for m in ("follow_through", "edit_follow_through") if role.get(m)), None
    )
    evaluated = (role.get("both_passed") or {}).get("n")
    parts = [f"{pairs} pairs" if pairs is not None else None]
    parts.append(f"{agents} agents" if agents is not None else None)
    if evaluated is not None and evaluated != pairs:
        parts.append(f"{evaluated} evaluated")
    return " / ".join(p for p in parts if p) or "–"


def _verdict(row: dict) -> str | None:
    """Plain words: where the student beats the base (paired interval above 0) and the copier
    (a metric the copier does not clear), and where it does not."""
    if row["roles"]["student"] is None:
        return None
    over_base = [SHORT[m] for m, d in row["deltas"].items() if d["ci95"] and d["ci95"][0] > 0]
    not_base = [SHORT[m] for m in REPORT_METRICS if SHORT[m] not in over_base]
    parts = (
        [
            "beats the base on "
            + (", ".join(over_base) or "nothing")
            + " (paired 95 % interval above 0)"
            + (f", not on {', '.join(not_base)}" if not_base else "")
        ]
        if row["deltas"]
        else ["has no paired delta over the base recorded"]
    )
    cop, roles = row["copyable"], row["roles"]
    if any(v is not None for v in cop.values()):
        beats = [
            SHORT[m]
            for m in REPORT_METRICS
            if cop[m] is False
            and (roles["student"] or {}).get(m)
            and roles["student"][m]["value"] > roles["copier"][m]["value"]
        ]
        copyable = [SHORT[m] for m in REPORT_METRICS if cop[m]]
        parts.append(
            "beats the copier on "
            + (", ".join(beats) or "nothing")
            + (f"; copyable: {', '.join(copyable)}" if copyable else "")
        )
    return f"Student {'; '.join(parts)}."


def _variant_table(row: dict) -> list[str]:
    title = f"### {row['variant']}" + (f" (seed {row['seed']})" if row["seed"] is not None else "")
    cols = " | ".join(SHORT[m] for m in REPORT_METRICS)
    lines = [title, "", f"| row | {cols} | n |", "|---" * (len(REPORT_METRICS) + 2) + "|"]
    for role, _, label in ROLES:
        stats = row["roles"][role]
        if stats is None:
            continue
        cells = " | ".join(_cell(stats[m]) for m in REPORT_METRICS)
        lines.append(f"| {label} | {cells} | {_n(stats)} |")
        if role == "student" and row["deltas"]:
            deltas = " | ".join(_delta_cell(row["deltas"].get(m)) for m in REPORT_METRICS)
            n = next(iter(row["deltas"].values()))["n"]
            lines.append(f"| Δ student − base (paired) | {deltas} | {n} paired |")
    cop = row["copyable"]
    if any(v is not None for v in cop.values()):
        marks = " | ".join(
            "–" if cop[m] is None else ("**copyable**" if cop[m] else "no") for m in REPORT_METRICS
        )
        lines.append(f"| copyable? | {marks} | |")
    notes = []
    if row["by_construction"]:
        notes.append(f"★ teacher ({row['teacher_kind']}): {row['by_construction']}.")
    elif row["roles"]["teacher"] is not None:
        notes.append(f"★ teacher ({row['teacher_kind'] or 'unknown kind'}): measured ceiling.")
    verdict = _verdict(row)
    if verdict:
        notes.append(verdict)
    if row["passes"] is not None:
        notes.append(f"Seed bar on the point estimate: {'pass' if row['passes'] else 'FAIL'}.")
    return [*lines, "", *notes]


def _spread(values: list[float], delta: bool = False) -> str:
    """mean ± sd (min–max) in percent, or in signed points for a delta."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    if delta:
        lo, hi = min(values), max(values)
        return f"{100 * mean:+.0f} ± {100 * sd:.0f} pts ({100 * lo:+.0f} to {100 * hi:+.0f})"
    return f"{_pct(mean)} ± {100 * sd:.0f} ({_pct(min(values))}–{_pct(max(values))})"


def seed_table(rows: list[dict], groups: Mapping[str, list[str]]) -> list[str]:
    """Per seed group, the student's (and its delta over base's) mean ± sd (min–max) over the
    seeds with a student result."""
    by_name = {r["variant"]: r for r in rows}
    cols = " | ".join(SHORT[m] for m in REPORT_METRICS)
    lines: list[str] = []
    pending: list[str] = []
    for label, members in groups.items():
        have = [by_name[v] for v in members if v in by_name and by_name[v]["roles"]["student"]]
        if not have:
            continue
        if not lines:
            lines = [
                "### Seeds (variants differing only by seed: mean ± sd (min–max))",
                "",
                f"| group | seeds | row | {cols} |",
                "|---" * (len(REPORT_METRICS) + 3) + "|",
            ]
        seeds = ", ".join(str(r["seed"]) for r in have)
        for key, name in (("student", "student"), ("delta", "Δ over base")):
            cells = []
            for m in REPORT_METRICS:
                vals = [r[f"{key}_{m}"] for r in have if r[f"{key}_{m}"] is not None]
                cells.append(_spread(vals, delta=key == "delta") if vals else "–")
            lines.append(f"| {label} | {len(have)} ({seeds}) | {name} | {' | '.join(cells)} |")
        missing = [v for v in members if v not in {r["variant"] for r in have}]
        if missing:
            pending.append(f"{label}: not yet run for {', '.join(missing)}.")
    return [*lines, *([""] + pending if lines and pending else [])]


def report_markdown(rows: list[dict], groups: Mapping[str, list[str]] | None = None) -> str:
    if not rows:
        return "_No variant has teacher or student metrics yet._"
    out: list[str] = []
    for row in rows:
        out += [*_variant_table(row), ""]
    out += seed_table(rows, groups or {})
    out.append(
        "\nPF = plan_first, PC = plan_content, both_passed (per pair); FT = follow_through, "
        "edit-FT = edit_follow_through (per agent). Cells: rate [95 % interval: cluster "
        "bootstrap over features; Wilson where no cluster interval was recorded]; ✓ / ✗: the "
        "interval's lower bound clears / misses the seed bar (PF ≥ 70 %, PC ≥ 70 %, FT ≥ 60 %). "
        "Controls run through the same runtime on the same test pairs; a metric the copier "
        "clears (≥ the seed bar or ≥ the student) is **copyable**."
    )
    return "\n".join(out)


def report_plot(rows: list[dict], path: Path | None = None) -> bytes:
    """PNG: teacher follow-through (x) vs student follow-through (y), one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="student = teacher")
    ax.axhline(THRESHOLDS["follow_through"], c="tab:red", lw=1, ls=":", label="seed bar (60 %)")
    for r in rows:
        x, y = r["teacher_follow_through"], r["student_follow_through"]
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=50)
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if r["base_follow_through"] is not None:
            ax.scatter([x], [r["base_follow_through"]], marker="x", c="grey")
        if r.get("copier_follow_through") is not None:
            ax.scatter(
                [x], [r["copier_follow_through"]], marker="s", facecolors="none", edgecolors="k"
            )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("teacher follow_through (ceiling)")
    ax.set_ylabel("student follow_through (x: untrained base, □: copier)")
    ax.set_title("Distillation is bounded by the teacher")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data
