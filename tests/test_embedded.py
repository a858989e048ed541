"""The embedded backend launcher: finds the packaged GGUF, serves, and never leaves orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from drpo.embedded import EmbeddedBackend, find_gguf, free_port
from prompts.config import EMBEDDED_MODEL_ID

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serves_the_packaged_model_under_its_model_id(embedded_backend: EmbeddedBackend) -> None:
    assert find_gguf().suffix == ".gguf"
    models = httpx.get(f"{embedded_backend.base_url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [EMBEDDED_MODEL_ID]


def test_stop_ends_the_server_process() -> None:
    if os.environ.get("DRPO_REQUIRE_INTEGRATION") != "1":
        pytest.importorskip("llama_cpp")
    backend = EmbeddedBackend(port=free_port()).start()
    process = backend._process
    assert process is not None and _alive(process.pid)
    backend.stop()
    assert not _alive(process.pid)


def test_server_dies_when_its_parent_is_killed_hard(tmp_path: object) -> None:
    if os.environ.get("DRPO_REQUIRE_INTEGRATION") != "1":
        pytest.importorskip("llama_cpp")
    script = textwrap.dedent(
        """
        import sys, time
        from drpo.embedded import EmbeddedBackend
        backend = EmbeddedBackend().start()
        print(backend._process.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "llama.cpp server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
