from coop_dag.config.variants import load_variants
from coop_dag.eval.lineage import LineageStore
from coop_dag.eval.report import report_markdown, report_plot, report_rows, seed_groups


def _summary(pf, pc, ft, eft=0.0, both=0.0, cluster=True):
    s = {
        "n_pairs": 18,
        "n_agents": 36,
        "plan_first_rate": pf,
        "plan_content_rate": pc,
        "follow_through_rate": ft,
        "edit_follow_through_rate": eft,
        "both_passed_rate": both,
    }
    for m, rate in (
        ("plan_first", pf),
        ("plan_content", pc),
        ("follow_through", ft),
        ("edit_follow_through", eft),
        ("both_passed", both),
    ):
        s[f"{m}_ci95"] = [max(0, rate - 0.2), min(1, rate + 0.1)]  # Wilson stand-in
        if cluster:
            s[f"{m}_cluster_ci95"] = [max(0, rate - 0.25), min(1, rate + 0.05)]
    return s


def _deltas(**values):
    return {
        m: {"delta": d, "n": 36 if "follow" in m else 18, "ci95": [d - 0.3, d + 0.1]}
        for m, d in values.items()
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
    # no paired delta recorded: the difference of the rates
    assert abs(rows[0]["delta_follow_through"] - 0.65) < 1e-9
    md = report_markdown(rows)
    # rate, cluster interval, whether its lower bound clears the bar; n per pair and agent
    assert "| **student** | 100% [75–100] ✓ | 90% [65–95] ✗ | 75% [50–80] ✗ | 0% [0–5] | " in md
    assert "| 18 pairs / 36 agents |" in md
    assert "| base (untrained) | 0% [0–5] ✗ |" in md
    assert "### templated-up1" in md and "FAIL" in md
    assert "Student has no paired delta over the base recorded." in md  # not "beats nothing"
    png = report_plot(rows, tmp_path / "plot.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "plot.png").stat().st_size > 1000


def test_report_with_teacher_only_and_empty(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    assert "No variant" in report_markdown(report_rows(store))
    # an older record without cluster intervals: Wilson is shown instead
    metrics = _summary(0.5, 0, 0.5, cluster=False)
    store.record("teacher_validation", "gemini-api", "t", metrics=metrics)
    rows = report_rows(store)
    assert rows[0]["student_follow_through"] is None and rows[0]["passes"] is None
    assert rows[0]["roles"]["teacher"]["plan_first"]["interval"] == "wilson"
    assert "| teacher ★ | 50% [30–60] ✗ | 0% [0–10] ✗ |" in report_markdown(rows)


def test_controls_copyable_marker_deltas_and_teacher_note(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    facts = {"teacher_kind": "templated", "seed": 0}
    store.record(
        "teacher_validation", "templated", "t", facts=facts, metrics=_summary(1, 1, 1, 1, 1)
    )
    store.record(
        "behaviour_metrics",
        "templated",
        "s",
        metrics=_summary(1.0, 0.8, 0.9, 0.5, 0.1),
        deltas=_deltas(
            plan_first=1.0, plan_content=0.8, follow_through=0.9, edit_follow_through=0.2
        ),
    )
    store.record("base_student_metrics", "templated", "b", metrics=_summary(0, 0, 0, 0.3, 0))
    store.record("base_steering_metrics", "templated", "bs", metrics=_summary(0.1, 0, 0.05))
    # no copier passes tests; this one stands in for one whose both_passed reaches the student's
    copier = _summary(1.0, 1.0, 1.0, 0, 0.1)
    store.record("control_copier_metrics", "templated", "c", metrics=copier)
    [row] = report_rows(store)
    # the copier reaches the bar (PF, PC, FT) or the student's rate (both_passed: 10 % >= 10 %)
    assert row["copyable"] == {
        "plan_first": True,
        "plan_content": True,
        "follow_through": True,
        "edit_follow_through": False,
        "both_passed": True,
    }
    assert row["delta_plan_first"] == 1.0 and row["deltas"]["plan_first"]["ci95"] == [0.7, 1.1]
    assert row["by_construction"] and row["teacher_kind"] == "templated"
    md = report_markdown([row])
    labels = ["teacher ★", "**student**", "Δ student − base (paired)", "base (untrained)"]
    labels += ["base + steering", "copier (control)", "copyable?"]
    positions = [md.index(f"| {label} |") for label in labels]
    assert positions == sorted(positions)  # every row, in this order
    assert "| copyable? | **copyable** | **copyable** | **copyable** | no | **copyable** |" in md
    assert (
        "| copier (control) | 100% [75–100] ✓ | 100% [75–100] ✓ | 100% [75–100] ✓ | 0% [0–5] |"
        in md
    )
    assert "| Δ student − base (paired) | +100 pts [+70, +110] | +80 pts [+50, +90] |" in md
    assert "ceiling holds by construction" in md and "gold patch" in md
    # plain words: the edit-FT delta's interval [-10, +30] includes 0
    assert "Student beats the base on PF, PC, FT (paired 95 % interval above 0)" in md
    assert "not on edit-FT, both_passed" in md
    assert "beats the copier on edit-FT; copyable: PF, PC, FT, both_passed" in md


def test_a_metric_the_copier_scores_zero_on_is_not_copyable(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    store.record("behaviour_metrics", "templated", "s", metrics=_summary(0.5, 0.5, 0.5, 0, 0))
    store.record("control_copier_metrics", "templated", "c", metrics=_summary(0.6, 0, 0, 0, 0))
    [row] = report_rows(store)
    # PF: 60 % misses the bar but reaches the student's 50 %; 0 vs 0 is nothing copied
    assert row["copyable"]["plan_first"] is True
    assert not any(row["copyable"][m] for m in ("plan_content", "edit_follow_through"))
    md = report_markdown([row])
    assert "beats the copier on PC, FT; copyable: PF" in md  # edit-FT 0 vs 0: neither


def test_a_measured_teacher_is_not_said_to_hold_by_construction(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    facts = {"teacher_kind": "served"}
    store.record("teacher_validation", "vllm-native", "t", facts=facts, metrics=_summary(0.2, 0, 0))
    md = report_markdown(report_rows(store))
    assert "★ teacher (served): measured ceiling." in md and "by construction" not in md


def test_seed_variants_are_grouped_with_mean_and_spread(tmp_path):
    variants = load_variants()
    groups = seed_groups(variants)
    assert groups["templated"] == ["templated", "templated-seed1", "templated-seed2"]
    assert all(len(members) >= 2 for members in groups.values())
    store = LineageStore(tmp_path / "l.duckdb")
    for name, ft in (("templated", 0.6), ("templated-seed1", 0.8), ("templated-seed2", 1.0)):
        store.record("behaviour_metrics", name, name, metrics=_summary(1, 1, ft))
        store.record("base_student_metrics", name, name, metrics=_summary(0, 0, 0))
    rows = report_rows(store, variants)
    assert [r["seed"] for r in rows] == [0, 1, 2]
    md = report_markdown(rows, groups)
    assert "### Seeds" in md
    # follow_through over seeds 0, 1, 2: mean 80 %, sd 20 points, range 60-100 %
    assert (
        "| templated | 3 (0, 1, 2) | student | 100% ± 0 (100%–100%) | 100% ± 0 (100%–100%) "
        "| 80% ± 20 (60%–100%) |" in md
    )
    assert "| templated | 3 (0, 1, 2) | Δ over base | +100 ± 0 pts (+100 to +100) |" in md
