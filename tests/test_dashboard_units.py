"""The dashboard's pieces without a browser: SVG charts, run checkpoints read as JSON, report charts, and
what a missing browser does to the browser tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.ui_charts import Bar, BarGroup, Marker, Series, bar_chart, line_chart
from proxy.ui_data import judge_groups, list_runs, load_run, refusal_groups, report_labels, reward_curve
from tests.dashboard_browser import launched_chromium


def _node(node_id: str, level: int, action: str, rewards: list[float | None]) -> dict[str, object]:
    return {"id": node_id, "level": level, "action": action, "path_rewards": rewards, "prompt": "p"}


def test_reward_curve_is_best_and_mean_per_level_with_skip_and_extend_markers(tmp_path: Path) -> None:
    nodes = [
        _node("n0-0", 0, "initial", [3.0]),
        _node("n1-0", 1, "rewrite", [3.0, 4.0]),
        _node("n1-1", 1, "skip", [3.0, 2.0]),
        _node("n2-0", 2, "skip", [3.0, 4.0, 5.0]),
        _node("n3-0", 3, "rewrite", [3.0, 4.0, 5.0, None]),
    ]
    state = {"run_id": "r1", "status": "done", "config": {"model": "m"}, "beam": {"nodes": {n["id"]: n for n in nodes}}}
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "state.json").write_text(json.dumps(state))
    run = load_run(tmp_path, "r1")
    assert run is not None and run.model == "m"
    series, markers = reward_curve(run)
    best, mean = (dict(s.points) for s in series)
    assert best == {0: 3.0, 1: 3.5, 2: 4.0, 3: 4.0}
    assert mean == {0: 3.0, 1: 3.0, 2: 4.0, 3: 4.0}
    assert [(m.x, m.label) for m in markers] == [(1, "skip"), (2, "all skipped: depth +1")]


def test_a_run_with_only_its_trace_still_loads_and_junk_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "20260101-a").mkdir()
    trace = {"run_id": "20260101-a", "status": "stopped", "nodes": [_node("n0-0", 0, "initial", [2.0])], "beam": []}
    (tmp_path / "20260101-a" / "trace.json").write_text(json.dumps(trace))
    (tmp_path / "20260102-b").mkdir()
    (tmp_path / "20260102-b" / "state.json").write_text("{not json")
    (tmp_path / "20260103-c").mkdir()
    (tmp_path / "20260103-c" / "state.json").write_text(
        json.dumps({"sessions": [{"fresh_calls": 2, "by_role": {"judge": 2}}, {"fresh_calls": 3}]})
    )
    runs = list_runs(tmp_path)
    assert [r.run_id for r in runs] == ["20260103-c", "20260101-a"]
    assert runs[0].totals["fresh_calls"] == 5 and runs[0].by_role == {"judge": 2}
    assert len(runs[1].nodes) == 1 and runs[1].status == "stopped"
    assert list_runs(tmp_path / "missing") == []


def test_bar_chart_draws_bars_and_whiskers_and_escapes_text() -> None:
    groups = [BarGroup("<harmful>", [Bar(0.5, 0.2, 0.8, 10), Bar(None)]), BarGroup("ordinary", [Bar(0.1), Bar(0.0)])]
    svg = str(bar_chart('rates & "labels"', ["raw", "<v1>"], groups, 0.0, 1.0, percent=True))
    assert svg.count('<rect class="bar') == 3 and svg.count('class="whisker"') == 1
    assert "<harmful>" not in svg and "&lt;harmful&gt;" in svg and "&lt;v1&gt;" in svg
    assert re.search(r'<svg class="chart bar-chart"[^>]* width="640" height="260"', svg)
    assert ">50%<" in svg and ">100%<" in svg


def test_line_chart_breaks_lines_at_missing_values_and_draws_markers() -> None:
    series = [Series("best", [(0, 2.0), (1, None), (2, 3.0), (3, 4.0)]), Series("mean", [(0, 2.0)])]
    svg = str(line_chart("reward", series, [Marker(2, "skip")], low=1.0, high=5.0))
    assert svg.count("<polyline") == 1  # (2, 3) only: no line across the gap, none for a single point
    assert svg.count("<circle") == 4 and svg.count('class="marker"') == 1


def test_report_charts_take_refusal_per_label_and_judge_per_aspect() -> None:
    def metrics(refusal: float, judge: float | None) -> dict[str, object]:
        out: dict[str, object] = {"n": 4, "refusal": {"value": refusal, "low": 0.0, "high": 1.0, "n": 4}}
        if judge is not None:
            out["judge"] = {"Helpfulness": {"value": judge, "low": judge - 1, "high": judge + 0.5, "n": 4}}
        return out

    report = {
        "conditions": [
            {"name": "raw", "metrics": {"ordinary": metrics(0.0, 4.0), "harmful": metrics(0.25, None)}},
            {"name": "v1", "metrics": {"harmful": metrics(1.0, 2.0)}},
        ]
    }
    assert report_labels(report) == ["harmful", "ordinary"]
    names, groups = refusal_groups(report)
    assert names == ["raw", "v1"]
    assert [[b.value for b in g.bars] for g in groups] == [[0.25, 1.0], [0.0, None]]
    _, harmful = judge_groups(report, "harmful")
    assert [(g.label, [b.value for b in g.bars]) for g in harmful] == [("Helpfulness", [None, 2.0])]
    assert harmful[0].bars[1].low == 1.0


def test_a_missing_chromium_fails_under_required_integration_and_skips_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRPO_CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.setenv("DRPO_REQUIRE_INTEGRATION", "1")
    with pytest.raises(pytest.fail.Exception, match="Chromium is not installed"), launched_chromium(tmp_path):
        pass
    monkeypatch.delenv("DRPO_REQUIRE_INTEGRATION")
    with pytest.raises(pytest.skip.Exception), launched_chromium(tmp_path):
        pass
