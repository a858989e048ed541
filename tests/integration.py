"""One rule for tests that need an optional component (a backend, Redis, a browser, model weights):
skip with the reason when it is missing, unless ``DRPO_REQUIRE_INTEGRATION=1`` (set by CI), where a
missing component fails the test, so CI can never pass by skipping."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def integration_required() -> bool:
    return os.environ.get("DRPO_REQUIRE_INTEGRATION") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip because of ``reason``, or fail when integration is required."""
    if integration_required():
        pytest.fail(f"DRPO_REQUIRE_INTEGRATION=1 but {reason}")
    pytest.skip(reason)
