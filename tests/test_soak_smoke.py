"""bench/soak.py runs end to end (a few seconds instead of ten minutes) and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = [
    "--stream-minutes", "0.05", "--plain-minutes", "0.1", "--big-minutes", "0.03",
    "--stream-clients", "4", "--plain-clients", "4", "--big-clients", "1", "--big-mb", "1",
    "--warmup-seconds", "1", "--settle-seconds", "1",
]  # fmt: skip


@pytest.mark.timeout(240)
def test_soak_smoke_run_prints_the_summary_json() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), *SMOKE],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary) == {"errors", "rss_growth", "fds_end_minus_start", "p99_ratio_big_bodies"}
    assert summary["errors"] == 0, done.stdout[-3000:]
    assert isinstance(summary["rss_growth"], float) and isinstance(summary["fds_end_minus_start"], int)
