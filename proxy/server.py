"""Run the proxy app under uvicorn (uvloop + httptools, no access log)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM makes :meth:`run` *return*.

    Stock uvicorn re-raises the captured signal after a graceful shutdown, which would kill
    the caller before it can stop what it started (e.g. the embedded backend).
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run(app: ASGIApp, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully and return."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    _Server(config).run()
