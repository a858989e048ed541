"""Optimizer progress off a terminal: plain lines on stage changes and at most every 10 s."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from optimizer import progress
from optimizer.llm import Counters
from optimizer.progress import PLAIN_INTERVAL_S, ProgressView


def test_a_redirected_run_prints_plain_lines_at_stage_changes_and_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    counters = Counters()
    with ProgressView(console, counters, projected_calls=100) as view:
        view.update(stage="aspects", position="12 queries")
        for _ in range(50):  # a burst of calls within one interval: no new line
            counters.fresh_calls += 1
            view.refresh()
        now[0] += PLAIN_INTERVAL_S
        view.update(position="still aspects", best=3.5)
        view.update(stage="stage 1: examples", position="example 1/4")
    lines = out.getvalue().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["aspects", "aspects", "stage", "stage"]
    assert "best reward 3.50" in lines[1] and "calls 50 fresh / 0 cached" in lines[1]
    assert "\x1b[" not in out.getvalue(), "plain lines carry no terminal control codes"


def test_a_terminal_gets_the_live_line_not_plain_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with ProgressView(console, Counters(), projected_calls=10) as view:
        view.update(stage="aspects")
    assert out.getvalue().count("aspects") >= 1 and "\x1b[" in out.getvalue()
