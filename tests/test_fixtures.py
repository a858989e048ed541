"""The fixtures' own rules: when reference data may be skipped and when its absence is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import find_shared_data


def test_present_shared_data_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setenv("DRPO_REQUIRE_INTEGRATION", "1")
    assert find_shared_data(tmp_path / "shared" / "data") == tmp_path / "shared" / "data"


def test_absent_shared_data_fails_when_integration_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRPO_REQUIRE_INTEGRATION", "1")
    with pytest.raises(pytest.fail.Exception, match="DRPO_REQUIRE_INTEGRATION=1"):
        find_shared_data(tmp_path / "shared" / "data")


def test_absent_shared_dir_skips_with_a_reason_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRPO_REQUIRE_INTEGRATION", raising=False)
    with pytest.raises(pytest.skip.Exception, match="is absent"):
        find_shared_data(tmp_path / "shared" / "data")


def test_a_shared_dir_without_data_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("DRPO_REQUIRE_INTEGRATION", "0")
    with pytest.raises(pytest.fail.Exception, match="has no data/"):
        find_shared_data(tmp_path / "shared" / "data")
