"""A model server run as a child process: the one launcher behind every managed backend.

:class:`ChildServer` starts a server's command on a free loopback port, keeps its output
in a log file, waits until its readiness URL answers 200, and always stops it (its whole
process group) on the way out. On Linux the child also dies with us, even on SIGKILL
(:func:`spawn_tied_to_parent`). Subclasses only say which command to run and which path
tells that the server is ready: :class:`drpo.embedded.EmbeddedBackend` (llama.cpp) and
:class:`drpo.vllm_backend.VLLMBackend`.
"""

from __future__ import annotations

import contextlib
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
from typing import IO, ClassVar, Self

import httpx

logger = logging.getLogger(__name__)


class ServerLaunchError(RuntimeError):
    """A managed server cannot be found, started, or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def same_home_env(home: Path, config: Path | None) -> dict[str, str]:
    """Environment for a ``drpo`` child that must use its parent's home (store, runs, caches) and config."""
    env = {"DRPO_HOME": str(home)}
    if config is not None:
        env["DRPO_CONFIG"] = str(config)
    return env


def spawn_tied_to_parent(
    command: list[str],
    log: IO[bytes] | None = None,
    env: dict[str, str] | None = None,
    inherit_output: bool = False,
    whole_group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session; on Linux it gets SIGKILL when this process dies.

    Its output goes to ``log`` (nowhere without one), or to ours with ``inherit_output``;
    ``env`` is added to our environment for it.

    The child runs :mod:`drpo.die_with_parent` first, which arms the signal and checks that
    we are still its parent before exec'ing ``command`` (no Python runs between our fork and
    exec: ``preexec_fn`` is unsafe in a threaded parent). With ``whole_group`` the wrapper
    stays as the command's parent and kills its whole process group when we die (for
    servers that start processes of their own). Elsewhere :meth:`ChildServer.stop` is the
    only cleanup.
    """
    if sys.platform.startswith("linux"):
        guard = [sys.executable, "-m", "drpo.die_with_parent", *(["--group"] if whole_group else [])]
        command = [*guard, str(os.getpid()), *command]

    def start() -> subprocess.Popen[bytes]:
        # A new session gives the child its own process group so stop() can end all of it.
        return subprocess.Popen(
            command,
            stdout=None if inherit_output else log if log is not None else subprocess.DEVNULL,
            stderr=None if inherit_output else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
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


class ChildServer:
    """An OpenAI-compatible server run as a child process for the duration of a ``with`` block.

    Subclasses set :attr:`name`, :attr:`ready_path` (relative to the server root) and
    :attr:`error` (raised for every start-up failure), and implement :meth:`command`.
    """

    name: ClassVar[str] = "server"
    ready_path: ClassVar[str] = "/v1/models"
    error: ClassVar[type[ServerLaunchError]] = ServerLaunchError
    # True for servers that start processes of their own: all of them die with us.
    whole_group: ClassVar[bool] = False

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
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``) clients and the proxy use."""
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        """The server's command line; raises :attr:`error` when it cannot be run here."""
        raise NotImplementedError

    def start(self) -> Self:
        command = self.command()
        logger.info("starting %s on %s", self.name, self.base_url)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed right after the fork
        try:
            self._process = spawn_tied_to_parent(command, log, whole_group=self.whole_group)
        except OSError as exc:
            raise self.error(f"cannot start the {self.name} ({command[0]}): {exc.strerror or exc}") from exc
        finally:
            if log is not None:
                log.close()  # the child holds its own copy of the descriptor
        try:
            wait_until_ok(self.root_url + self.ready_path, self.ready_timeout, self._process, name=self.name)
        except NotReady as exc:
            self.stop()
            hint = f" (see its log: {self.log_path})" if self.log_path else ""
            raise self.error(f"{exc}{hint}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds."""
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
