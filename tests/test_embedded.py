"""The embedded backend launcher: finds the packaged GGUF, serves, and never leaves orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
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


def test_a_second_request_does_not_cut_a_running_stream_short(embedded_backend: EmbeddedBackend) -> None:
    """llama-cpp-python interrupts streams by default; the embedded backend must queue instead."""
    body = {
        "model": EMBEDDED_MODEL_ID,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who bakes bread."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    pieces = 0
    finish_reason = None
    with httpx.Client(timeout=120) as client, client.stream(
        "POST", f"{embedded_backend.base_url}/chat/completions", json=body
    ) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break
        # Another request arrives while the stream runs; it must wait, not end the stream.
        with httpx.Client(timeout=120) as second:
            thread = threading.Thread(target=lambda: second.get(f"{embedded_backend.base_url}/models"))
            thread.start()
            for line in lines:
                if line.startswith("data: {"):
                    chunk = json.loads(line[len("data: ") :])
                    choice = chunk["choices"][0]
                    if choice["delta"].get("content"):
                        pieces += 1
                    finish_reason = choice.get("finish_reason") or finish_reason
            thread.join()
    assert finish_reason == "length", f"stream ended early after {pieces} tokens"
    assert pieces >= 40
