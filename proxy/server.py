"""Run the proxy app under uvicorn (uvloop + httptools, no access log).

Connections are served by :class:`proxy.protocol.LimitedHttpToolsProtocol`: header size,
header/body read timeouts, keep-alive timeout and a connection cap (see that module).

About every 10 s the server asks glibc to hand freed heap pages back to the OS
(``malloc_trim``). After a multi-megabyte request body glibc raises its mmap threshold and
keeps later big buffers on the heap, so without the trim RSS stays up to tens of MiB above
its steady level after a burst of big bodies (measured in bench/soak.py). A trim takes about
3 ms right after such a burst and a few microseconds otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import resource
import signal
import threading
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from proxy.protocol import ServerLimits, protocol_class

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# File descriptors kept out of the connection cap: listeners, the store, logs, the backend pool's spares.
_RESERVED_FDS = 64
_TRIM_EVERY_TICKS = 100  # uvicorn ticks every 0.1 s


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM makes :meth:`run` *return*.

    Stock uvicorn re-raises the captured signal after a graceful shutdown, which would kill
    the caller before it can stop what it started (e.g. the embedded backend). It also
    trims the C heap every ``_TRIM_EVERY_TICKS`` ticks (see the module doc).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._trim = _malloc_trim()

    async def on_tick(self, counter: int) -> bool:
        if counter % _TRIM_EVERY_TICKS == 0 and self._trim is not None:
            self._trim(0)
        return await super().on_tick(counter)

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


def fit_to_fd_limit(limits: ServerLimits) -> ServerLimits:
    """``limits`` with ``max_connections`` lowered so the process cannot run out of fds.

    Each client connection may hold a backend connection too, so the cap is at most half of
    what the soft ``RLIMIT_NOFILE`` leaves after a reserve.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits
    room = max(16, (soft - _RESERVED_FDS) // 2)
    if limits.max_connections <= room:
        return limits
    logger.warning(
        "max connections lowered from %d to %d to fit the open-file limit (%d)", limits.max_connections, room, soft
    )
    return dataclasses.replace(limits, max_connections=room)


def build_server(
    app: ASGIApp, host: str, port: int, log_level: str = "info", limits: ServerLimits | None = None
) -> uvicorn.Server:
    """The uvicorn server :func:`run` runs (tests start it in a thread)."""
    limits = fit_to_fd_limit(limits or ServerLimits())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        loop="uvloop",
        http=protocol_class(limits),
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_keep_alive=limits.keepalive_timeout,  # type: ignore[arg-type]  # typed int, used as a delay
        timeout_graceful_shutdown=10,
    )
    return _Server(config)


def run(app: ASGIApp, host: str, port: int, log_level: str = "info", limits: ServerLimits | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully and return."""
    build_server(app, host, port, log_level, limits).run()
