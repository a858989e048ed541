"""The embedded backend launcher: finds the packaged GGUF, serves, and never leaves orphans.

The orphan tests without llama.cpp start a sleeping Python child through the same
launcher, so they run everywhere (Linux: they read /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drpo.die_with_parent import PARENT_GONE_EXIT
from drpo.embedded import EmbeddedBackend, find_gguf, free_port
from prompts.config import EMBEDDED_MODEL_ID

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs prctl and /proc")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.integration
def test_serves_the_packaged_model_under_its_model_id(embedded_backend: EmbeddedBackend) -> None:
    assert find_gguf().suffix == ".gguf"
    models = httpx.get(f"{embedded_backend.base_url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [EMBEDDED_MODEL_ID]


@pytest.mark.integration
def test_stop_ends_the_server_process() -> None:
    if os.environ.get("DRPO_REQUIRE_INTEGRATION") != "1":
        pytest.importorskip("llama_cpp")
    backend = EmbeddedBackend(port=free_port()).start()
    process = backend._process
    assert process is not None and _alive(process.pid)
    backend.stop()
    assert not _alive(process.pid)


@pytest.mark.integration
def test_server_dies_when_its_parent_is_killed_hard() -> None:
    if os.environ.get("DRPO_REQUIRE_INTEGRATION") != "1":
        pytest.importorskip("llama_cpp")
    script = """
        from drpo.embedded import EmbeddedBackend
        backend = EmbeddedBackend().start()
        print(backend._process.pid, flush=True)
        time.sleep(120)
        """
    with _parent(script) as (parent, child_pid):
        _kill_and_expect_child_gone(parent, child_pid, "llama.cpp server")


# -- the orphan guard, with a sleeping child instead of llama.cpp -------------------

_SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(120)']"


@contextlib.contextmanager
def _parent(body: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``body`` in a parent process that prints its child's pid; kill both afterwards."""
    script = "import sys, threading, time\n" + textwrap.dedent(body)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        yield parent, child_pid
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        if child_pid and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _kill_and_expect_child_gone(parent: subprocess.Popen[str], child_pid: int, what: str) -> None:
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid), f"{what} outlived its SIGKILLed parent"


@linux_only
def test_child_dies_when_its_parent_is_killed_hard() -> None:
    script = f"""
        from drpo.embedded import spawn_tied_to_parent
        child = spawn_tied_to_parent({_SLEEPER})
        print(child.pid, flush=True)
        time.sleep(120)
        """
    with _parent(script) as (parent, child_pid):
        _kill_and_expect_child_gone(parent, child_pid, "child")


@linux_only
def test_child_that_shuts_down_slowly_still_dies_with_its_parent() -> None:
    """A server busy with queued generations finishes them on SIGTERM (uvicorn's graceful shutdown),
    for a parent that no longer exists: the death signal must be one it cannot delay."""
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
    ]
    script = f"""
        from drpo.embedded import spawn_tied_to_parent
        child = spawn_tied_to_parent({stubborn!r})
        print(child.pid, flush=True)
        time.sleep(120)
        """
    with _parent(script) as (parent, child_pid):
        time.sleep(0.5)  # let the child install its SIGTERM handler
        _kill_and_expect_child_gone(parent, child_pid, "a child that ignores SIGTERM")


@linux_only
def test_child_outlives_the_thread_that_started_it_but_not_the_process() -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that forked exits: a launch from a short-lived
    thread must not tie the child to that thread."""
    script = f"""
        from drpo.embedded import spawn_tied_to_parent
        pids = []
        launcher = threading.Thread(target=lambda: pids.append(spawn_tied_to_parent({_SLEEPER}).pid))
        launcher.start()
        launcher.join()
        time.sleep(1.0)  # let the launcher's OS thread finish exiting
        print(pids[0], flush=True)
        time.sleep(120)
        """
    with _parent(script) as (parent, child_pid):
        time.sleep(1.0)
        assert _alive(child_pid), "the child died with the thread that launched it"
        _kill_and_expect_child_gone(parent, child_pid, "child")


@linux_only
def test_the_wrapper_refuses_to_start_an_orphan(tmp_path: Path) -> None:
    """If the parent is gone before the death signal is armed, the command never runs."""
    marker = tmp_path / "ran"
    command = [sys.executable, "-m", "drpo.die_with_parent"]
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    wrong_parent = subprocess.run([*command, str(os.getpid() + 1_000_000), *touch], timeout=60)
    assert wrong_parent.returncode == PARENT_GONE_EXIT and not marker.exists()
    right_parent = subprocess.run([*command, str(os.getpid()), *touch], timeout=60)
    assert right_parent.returncode == 0 and marker.exists()


@pytest.mark.integration
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
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{embedded_backend.base_url}/chat/completions", json=body) as response,
    ):
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
