"""Per-connection limits on top of uvicorn's httptools HTTP/1.1 protocol.

Stock uvicorn bounds neither the size of request headers nor the time a client may take to
send its request: a connection that sends nothing, half its headers, or less body than its
``Content-Length`` promised holds a file descriptor (and, for headers, memory) until the
client leaves. :class:`LimitedHttpToolsProtocol` adds:

``max_header_bytes`` (``DRPO_MAX_HEADER_BYTES``, 64 KiB)
    The request line plus every header name and value. Over it the client gets 431 (OpenAI
    error shape) and the connection is closed. Headers still arriving are cut off as soon as
    the bytes received for them pass the limit, so one connection buffers at most the limit
    plus one socket read.
``header_timeout`` (``DRPO_HEADER_TIMEOUT``, 10 s)
    From accepting a connection, or from the first byte of a later request on it, until the
    end of that request's headers. A connection that sent nothing is closed silently; one
    stuck in the middle of its headers gets 408 first.
``body_timeout`` (``DRPO_BODY_TIMEOUT``, 30 s)
    How long a started body may stall: no body bytes for that long (the check runs on a
    timer, so a stall is noticed between one and two ``body_timeout`` after the last byte)
    gives 408 and a close. A slow upload that keeps moving is never cut off, and time in
    which uvicorn's flow control stopped reading (the app is behind) does not count.
``keepalive_timeout`` (``DRPO_KEEPALIVE_TIMEOUT``, 5 s)
    uvicorn's own ``timeout_keep_alive``: an idle connection between requests is closed.
``max_connections`` (``DRPO_MAX_CONNECTIONS``, 2048; lowered to fit the process's fd limit)
    A connection beyond the cap first closes the connections that have been idle longest
    (no request in progress: fresh, between requests, or still sending headers), a batch
    at a time so the scan is rare. Only when every connection is busy is the newcomer
    turned away with 503. uvicorn's ``limit_concurrency`` is not used because it answers
    503 as soon as the *number* of connections reaches the limit, idle ones included, so
    idle keep-alive connections would lock out real work.

Every deadline is about the client *sending* its request. Once the request is complete no
timer runs until the response is done: a streamed answer may take minutes.

Hot-path cost: a request whose headers and body arrive with the first read arms no timer;
each read adds a counter increment and a length, each request one comparison (headers are
only added up when the reads that carried them exceed the limit). The module depends
on uvicorn's ``HttpToolsProtocol`` internals (``parser``, ``cycle``, ``flow``, callbacks),
which tests/test_server_limits.py exercises against the real server.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from prompts.config import Settings
from proxy.errors import ProxyError, error_body

logger = logging.getLogger(__name__)


class HeadersTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class TooManyConnections(ProxyError):
    status = 503
    type = "server_error"
    code = "too_many_connections"


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
        )


# What the connection is reading: nothing yet, a request's headers, its body, or nothing
# more because the request is complete (the app's turn).
_IDLE, _HEADERS, _BODY, _DONE = range(4)
_REFUSAL_LOG_INTERVAL = 60.0


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request we already answered."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, timeout and connection limits (see the module doc)."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    _last_refusal_log: ClassVar[float] = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stage = _IDLE
        self._raw_header_bytes = 0  # bytes received while the headers were incomplete
        self._read_size = 0  # bytes of the read being parsed
        self._reads = 0  # progress marker for the body timer
        self._reads_at_arm = 0
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._stopped = False  # we answered or closed: ignore whatever still arrives

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._log_refusal()
            self._answer_and_close(TooManyConnections("the server is at its connection limit; retry shortly"))
            return
        self._timer = self.loop.call_later(self.limits.header_timeout, self._headers_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._reads += 1
        self._read_size = len(data)
        if self._stage == _HEADERS:
            self._raw_header_bytes += self._read_size
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self._stopped:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return
        # Arm a deadline only for a request still incomplete after this read.
        stage = self._stage
        if stage == _HEADERS:
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
            elif self._timer is None:
                self._timer = self.loop.call_later(self.limits.header_timeout, self._headers_overdue)
        elif stage == _BODY:
            if self._timer is None:
                self._reads_at_arm = self._reads
                self._timer = self.loop.call_later(self.limits.body_timeout, self._body_overdue)
        elif stage == _IDLE and self._timer is None:
            # Bytes that begin no request (blank lines) stopped uvicorn's keep-alive timer.
            self._timer = self.loop.call_later(self.limits.header_timeout, self._headers_overdue)

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stage = _HEADERS
        self._raw_header_bytes = 0

    def on_headers_complete(self) -> None:
        # The headers arrived within the bytes counted so far plus this read: when those fit the
        # limit, so do the headers (the usual case, no per-header work). Otherwise add them up.
        if self._raw_header_bytes + self._read_size > self.limits.max_header_bytes and self._headers_size() > (
            self.limits.max_header_bytes
        ):
            self._refuse_headers()
            raise _Refused
        self._stage = _BODY
        self._cancel_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()
        if self.cycle.response_complete:
            # Answered before its body ended (e.g. 413): idle from here on, as after any response
            # (the bytes of the body stopped uvicorn's keep-alive timer; the header deadline applies).
            self._stage = _IDLE
        else:
            self._stage = _DONE

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        if self._stage == _DONE:
            self._stage = _IDLE
        super().on_response_complete()

    # -- limits ------------------------------------------------------------------------

    def _headers_size(self) -> int:
        """The request line's target and every header line, as received (names lower-cased)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_headers(self) -> None:
        limit = self.limits.max_header_bytes
        self._answer_and_close(HeadersTooLarge(f"request headers are larger than {limit} bytes"))

    def _headers_overdue(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still going out (the client pipelined): the client is not stalling.
            self._timer = self.loop.call_later(self.limits.header_timeout, self._headers_overdue)
        elif self._stage == _HEADERS:
            seconds = self.limits.header_timeout
            self._answer_and_close(RequestTimeout(f"request headers not received within {seconds:g} s"))
        else:  # connected (or sent blank lines) and never started a request
            self._stopped = True
            self.transport.close()

    def _body_overdue(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._stage != _BODY:
            return
        if self._reads != self._reads_at_arm or self.flow.read_paused:
            self._reads_at_arm = self._reads
            self._timer = self.loop.call_later(self.limits.body_timeout, self._body_overdue)
            return
        seconds = self.limits.body_timeout
        self._answer_and_close(RequestTimeout(f"request body stalled: no bytes for {seconds:g} s"))

    def _make_room(self) -> bool:
        """Close the longest-idle connections so this one fits; False when all are busy."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        excess = len(others) + 1 - self.limits.max_connections
        if excess <= 0:
            return True
        idle = [c for c in others if isinstance(c, LimitedHttpToolsProtocol) and c._is_idle()]
        if len(idle) < excess:
            return False
        # A batch beyond the excess, so the next admissions need no scan.
        batch = min(len(idle), max(excess, self.limits.max_connections // 64))
        for connection in heapq.nsmallest(batch, idle, key=LimitedHttpToolsProtocol._shed_order):
            connection._shed()
        return True

    def _is_idle(self) -> bool:
        return self._stage in (_IDLE, _HEADERS) and (self.cycle is None or self.cycle.response_complete)

    def _shed_order(self) -> tuple[bool, float]:
        # Fully idle connections before those that started sending headers; the oldest first.
        return self._stage != _IDLE, self._idle_since

    def _shed(self) -> None:
        self._stopped = True
        self._cancel_timer()
        self.transport.close()

    def _answer_and_close(self, error: ProxyError) -> None:
        """Send ``error`` when nothing else is being written on this connection, then close it."""
        self._stopped = True
        self._cancel_timer()
        cycle = self.cycle
        if self._can_answer():
            self.transport.write(self._error_bytes(error))
        if cycle is not None and not cycle.response_complete:
            # The app may still be waiting for the body: it sees a disconnect, and writes nothing.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _can_answer(self) -> bool:
        if self._stage == _BODY:  # cycle is the request being read: answer unless it was answered
            return not self.cycle.response_started
        # A new request, or none yet: answer unless an earlier response is still going out.
        return self.cycle is None or self.cycle.response_complete

    def _error_bytes(self, error: ProxyError) -> bytes:
        body = error_body(error)
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        return b"".join([*head, body])

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @classmethod
    def _log_refusal(cls) -> None:
        now = time.monotonic()
        if now - cls._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            LimitedHttpToolsProtocol._last_refusal_log = now
            logger.warning(
                "connection limit (%d) reached with every connection busy: refusing new connections with 503",
                cls.limits.max_connections,
            )


def protocol_class(limits: ServerLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), bound to ``limits``."""
    return type("ConfiguredHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
