"""Headless Chromium for the dashboard tests: the Debian package, driven by Playwright.

Playwright's own browser downloads are never used (they are not reachable, and CI installs
Debian's ``chromium``); a missing browser skips, or fails under ``DRPO_REQUIRE_INTEGRATION=1``.
Screenshots go to ``DRPO_TEST_ARTIFACTS`` (default ``tests/artifacts/``, not committed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration import unavailable

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    configured = os.environ.get("DRPO_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts_dir() -> Path:
    where = Path(os.environ.get("DRPO_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def require_chromium() -> str:
    """The Chromium executable, after checking Playwright is there too (else skip, or fail when required)."""
    executable = chromium_path()
    if executable is None:
        unavailable("Chromium is not installed (apt-get install chromium chromium-driver)")
    if importlib.util.find_spec("playwright") is None:
        unavailable("Playwright for Python is not installed (pip install '.[test]')")
    return executable


@contextmanager
def launched_chromium(profile: Path) -> Iterator[Any]:
    """The system Chromium, headless, with a fresh profile directory; yields a Playwright browser context."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
