"""The distillation report: teacher ceiling vs student vs untrained base, per variant — the
seed's Tier-5 table — as markdown and a PNG plot, read from the lineage store."""

from __future__ import annotations

import io
from pathlib import Path

from coop_dag.lineage import LineageStore

METRICS = ("plan_first", "plan_content", "follow_through")
THRESHOLDS = {"plan_first": 0.7, "plan_content": 0.7, "follow_through": 0.6}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def report_rows(store: LineageStore) -> list[dict]:
    """One row per variant with any teacher or student metrics recorded."""
    teacher = store.latest_metrics("teacher_validation")
    student = store.latest_metrics("behaviour_metrics")
    base = store.latest_metrics("base_student_metrics")
    rows = []
    for variant in sorted(set(teacher) | set(student)):
        t, s = teacher.get(variant, {}), student.get(variant, {})
        b = base.get(variant, {})
        row = {"variant": variant}
        for m in METRICS:
            row[f"teacher_{m}"] = t.get(m)
            row[f"student_{m}"] = s.get(m)
            row[f"base_{m}"] = b.get(m)
            row[f"delta_{m}"] = (
                s[m] - b[m] if s.get(m) is not None and b.get(m) is not None else None
            )
        row["student_both_passed"] = s.get("both_passed")
        row["passes"] = (
            all(s.get(m) is not None and s[m] >= THRESHOLDS[m] for m in METRICS) if s else None
        )
        rows.append(row)
    return rows


def report_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_No variant has teacher or student metrics yet._"
    head = (
        "| variant | teacher PF / PC / FT | student PF / PC / FT | base PF / PC / FT "
        "| Δ FT over base | seed bar |\n|---|---|---|---|---|---|"
    )
    lines = [head]

    def trio(r: dict, who: str) -> str:
        return " / ".join(_pct(r[f"{who}_{m}"]) for m in METRICS)

    for r in rows:
        delta = r["delta_follow_through"]
        bar = {True: "pass", False: "FAIL", None: "–"}[r["passes"]]
        lines.append(
            f"| {r['variant']} | {trio(r, 'teacher')} | {trio(r, 'student')} | {trio(r, 'base')} "
            f"| {'–' if delta is None else f'{100 * delta:+.0f} pts'} | {bar} |"
        )
    lines.append(
        "\nPF = plan_first, PC = plan_content (per pair), FT = follow_through (per agent); "
        "seed bar: PF ≥ 70 %, PC ≥ 70 %, FT ≥ 60 %."
    )
    return "\n".join(lines)


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
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("teacher follow_through (ceiling)")
    ax.set_ylabel("student follow_through (x: untrained base)")
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
