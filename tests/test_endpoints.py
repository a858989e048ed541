"""Which endpoint `drpo optimize`, `drpo eval` and `drpo prompts promote` answer with: one precedence rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from drpo.endpoints import EMBEDDED, key_for, target_endpoint
from prompts.config import BackendConfig, FileConfig, ModelOptions
from tests.fakes.proxy_harness import make_settings

FILE = FileConfig(
    backends={
        "gpu": BackendConfig(url="http://gpu:8000", api_key=SecretStr("gpu-key")),
        "cpu": BackendConfig(url="http://cpu:8080/v1", api_key_env="CPU_KEY"),
    },
    models={"big": ModelOptions(backend="gpu")},
    default_backend="cpu",
)


@pytest.fixture(autouse=True)
def _no_role_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRPO_TARGET_API_KEY", raising=False)
    monkeypatch.setenv("CPU_KEY", "cpu-key")


def test_the_flag_wins_over_everything(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "http://env:1/v1")
    assert target_endpoint("big", "http://flag:9/v1/", settings, FILE) == ("http://flag:9/v1", None)


def test_a_models_own_backend_beats_the_environment(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "http://env:1/v1")
    assert target_endpoint("big", None, settings, FILE) == ("http://gpu:8000/v1", "gpu-key")


def test_the_environment_beats_the_default_backend(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "http://env:1/v1/")
    assert target_endpoint("other", None, settings, FILE)[0] == "http://env:1/v1"


def test_the_default_backend_then_the_embedded_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    assert target_endpoint("other", None, settings, FILE) == ("http://cpu:8080/v1", "cpu-key")
    assert target_endpoint("other", None, settings, FileConfig()) == (EMBEDDED, None)


def test_a_role_key_from_the_environment_overrides_the_configured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRPO_TARGET_API_KEY", "role-key")
    assert target_endpoint("big", None, make_settings(tmp_path, None), FILE) == ("http://gpu:8000/v1", "role-key")
    monkeypatch.setenv("JUDGE_KEY", "named")
    assert key_for("judge", "JUDGE_KEY") == "named"
    assert key_for("judge") is None
