from coop_dag.lineage import LineageStore
from coop_dag.report import report_markdown, report_plot, report_rows


def _summary(pf, pc, ft):
    return {
        "n_pairs": 12,
        "n_agents": 24,
        "plan_first_rate": pf,
        "plan_content_rate": pc,
        "follow_through_rate": ft,
        "plan_first_ci95": [0, 1],
        "plan_content_ci95": [0, 1],
        "follow_through_ci95": [0, 1],
    }


def test_report_renders_two_variants_side_by_side(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    for variant, student in (("templated", (1.0, 0.9, 0.75)), ("templated-up1", (0.2, 0.1, 0.3))):
        store.record("teacher_validation", variant, f"t-{variant}", metrics=_summary(1, 1, 0.95))
        store.record("behaviour_metrics", variant, f"s-{variant}", metrics=_summary(*student))
        store.record("base_student_metrics", variant, f"b-{variant}", metrics=_summary(0, 0, 0.1))
    rows = report_rows(store)
    assert [r["variant"] for r in rows] == ["templated", "templated-up1"]
    assert rows[0]["passes"] is True and rows[1]["passes"] is False
    assert abs(rows[0]["delta_follow_through"] - 0.65) < 1e-9
    md = report_markdown(rows)
    assert (
        "| templated | 100% / 100% / 95% | 100% / 90% / 75% | 0% / 0% / 10% | +65 pts | pass |"
        in md
    )
    assert "| templated-up1 |" in md and "FAIL" in md
    png = report_plot(rows, tmp_path / "plot.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "plot.png").stat().st_size > 1000


def test_report_with_teacher_only_and_empty(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    assert "No variant" in report_markdown(report_rows(store))
    store.record("teacher_validation", "gemini-api", "t", metrics=_summary(0.5, 0, 0.5))
    rows = report_rows(store)
    assert rows[0]["student_follow_through"] is None and rows[0]["passes"] is None
    assert "| gemini-api | 50% / 0% / 50% | – / – / – |" in report_markdown(rows)
