"""Put the stand-in ``vllm`` executable (tests/fakes/bin/vllm) first on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

FAKE_BIN = Path(__file__).resolve().parent / "bin"


def fake_vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose ``vllm`` is the stand-in, run by this test's interpreter."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{FAKE_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DRPO_FAKE_VLLM_PYTHON"] = sys.executable
    return env


def use_fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process (and its children) find the stand-in as ``vllm``."""
    for name, value in fake_vllm_env().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
