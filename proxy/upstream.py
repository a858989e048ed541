"""The forward call to a backend, on aiohttp's client.

httpx stays the API for everything off the hot path (model discovery, readiness); the
per-request forward uses ``aiohttp.ClientSession``: an asyncio protocol with the llhttp C
parser, its own keep-alive pool with a per-origin limit (requests beyond it wait), TLS and
read backpressure. Measured against the httpcore-based transport it replaced, in the same
runs (BENCHMARKS.md, "aiohttp as the forward path"): lower p50 latency and stream time to
first byte, and 10–30% less proxy CPU per request.

One thing aiohttp does not do for a POST: when a backend closes an idle keep-alive socket
just as we reuse it, the request fails (aiohttp re-sends idempotent methods only, and does
not check whether the connection was a reused one). :class:`Upstream` sends such a request
once more on a fresh connection, only if the failed connection was a reused one and not one
byte of the reply had arrived on it; to know the latter, every connection's protocol is
wrapped in a byte counter when its first request goes out.

Transport failures are mapped to the typed errors of :mod:`proxy.errors` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import ssl
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import BackendError, BackendTimeout, BackendUnavailable

Headers = Sequence[tuple[bytes, bytes]]

_LARGE_BODY = 1 << 20  # aiohttp wants bigger bodies as a stream, sent in pieces with flow control


@dataclass(frozen=True)
class Endpoint:
    """A backend's base URL, pre-split; request URLs are built once per path and kept."""

    scheme: str
    host: str
    port: int
    base_path: str
    host_header: bytes
    _urls: dict[bytes, URL] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:  # IPv6 literal
            host_header = f"[{host}]:{port}"
        return cls(scheme, host, port, parts.path.rstrip("/"), host_header.encode())

    def url(self, path: bytes) -> URL:
        url = self._urls.get(path)
        if url is None:
            target = self.base_path + path.decode("ascii")
            url = self._urls[path] = URL.build(
                scheme=self.scheme, host=self.host, port=self.port, path=target, encoded=True
            )
        return url


def map_transport_error(exc: BaseException, what: str) -> BackendError | None:
    """One mapping from aiohttp's exceptions to ours (``None``: not a transport failure)."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeout errors subclass it
        return BackendTimeout(f"{what}: the backend did not answer in time")
    if isinstance(exc, aiohttp.InvalidURL):
        return BackendUnavailable(f"unsupported backend URL: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BackendUnavailable(f"{what}: cannot connect to the backend")
    if isinstance(exc, aiohttp.ClientError):
        return BackendUnavailable(f"{what}: the backend connection failed ({type(exc).__name__})")
    return None


# -- the stale keep-alive retry ----------------------------------------------------------------


class _ByteCounter(asyncio.Protocol):
    """Sits between a connection's transport and aiohttp's protocol, counting bytes received."""

    __slots__ = ("inner", "received")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Attempt:
    """What one try of a request learned about its connection."""

    __slots__ = ("before", "counter", "reused")

    def __init__(self) -> None:
        self.counter: _ByteCounter | None = None
        self.reused = False
        self.before = 0

    def watch(self, transport: asyncio.BaseTransport) -> None:
        protocol = transport.get_protocol()
        if isinstance(protocol, _ByteCounter):
            self.reused = True  # counted since an earlier request: a kept-alive connection
        else:
            protocol = _ByteCounter(protocol)  # type: ignore[arg-type]
            transport.set_protocol(protocol)
        self.counter = protocol
        self.before = protocol.received

    @property
    def stale(self) -> bool:
        """A reused connection that failed before one byte of the reply arrived."""
        return self.reused and self.counter is not None and self.counter.received == self.before


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("drpo_upstream_attempt", default=None)

# What a socket the backend closed as we reused it looks like (a slow backend is a timeout, not this).
_STALE_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError)


class _Request(aiohttp.ClientRequest):
    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        attempt = _ATTEMPT.get()
        if attempt is not None and conn.transport is not None:
            attempt.watch(conn.transport)
        return await super().send(conn)


# -- the exchange ------------------------------------------------------------------------------


class Exchange:
    """One forwarded request: the backend's status, headers and (unread) body.

    Closing it (always, via :func:`read_all` / :func:`close_quietly`) hands a fully read
    keep-alive connection back to the pool and frees its slot under the per-origin limit;
    closing before the body is read drops the connection, which aborts the backend's work
    (that is how a client disconnect cancels generation).
    """

    __slots__ = ("_closed", "response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._closed = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Headers:
        return self.response.raw_headers

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.release()  # back to the pool only if the body was read to its end


class Upstream:
    """Keep-alive connections to every backend (one aiohttp session, one pool).

    At most ``max_connections_per_origin`` requests are in flight to one origin; more wait
    for a free connection (up to the read timeout), they do not fail. Idle connections are
    dropped after ``keepalive_expiry`` seconds, under the 5 s of uvicorn (vLLM,
    llama-cpp-python), llama.cpp's server and Node, so such a backend rarely closes a socket
    first; when one does close it just as we reuse it, the request is sent once more.
    """

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        *,
        max_connections_per_origin: int = 128,
        keepalive_expiry: float = 3.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        # ``connect`` covers the wait for a free connection too: as long as a read may take.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=read_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._retry_session: aiohttp.ClientSession | None = None

    def _new_session(self, *, fresh_connections: bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.max_connections_per_origin,
            keepalive_timeout=None if fresh_connections else self.keepalive_expiry,
            force_close=fresh_connections,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # bytes are relayed as the backend sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            request_class=_Request,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running loop
            self._session = self._new_session(fresh_connections=False)
        return self._session

    def _retry_client(self) -> aiohttp.ClientSession:
        # A retry must not take the next idle connection of the pool: after a burst the
        # backend may have closed them all. This session opens a new one for every request.
        if self._retry_session is None:
            self._retry_session = self._new_session(fresh_connections=True)
        return self._retry_session

    async def aclose(self) -> None:
        for session in (self._session, self._retry_session):
            if session is not None:
                await session.close()

    async def send(self, method: bytes, url: URL, headers: Headers, body: bytes) -> Exchange:
        """Send a request; returns once the backend's status and headers are in."""
        session = self._client()
        fields = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        verb = method.decode("ascii")
        try:
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                try:
                    response = await session.request(verb, url, headers=fields, data=_payload(body))
                except _STALE_ERRORS:
                    if not attempt.stale:
                        raise
                    # The backend closed this kept-alive socket as we reused it: once more, on a new one.
                    _ATTEMPT.set(None)
                    retry = self._retry_client()
                    response = await retry.request(verb, url, headers=fields, data=_payload(body))
            finally:
                _ATTEMPT.reset(token)
        except Exception as exc:
            error = map_transport_error(exc, "sending to the backend")
            if error is None:
                raise
            raise error from exc
        return Exchange(response)


def _payload(body: bytes) -> bytes | io.BytesIO:
    return io.BytesIO(body) if len(body) > _LARGE_BODY else body


async def read_all(exchange: Exchange) -> bytes:
    """The full body; transport errors mapped; the exchange closed in every case."""
    try:
        return await exchange.response.read()
    except Exception as exc:
        error = map_transport_error(exc, "reading the backend's response")
        if error is None:
            raise
        raise error from exc
    finally:
        await exchange.aclose()


async def iter_raw(exchange: Exchange) -> AsyncGenerator[bytes, None]:
    """Body chunks as the backend sent them (one per HTTP chunk of a chunked body, even when
    several arrived together; no re-buffering); transport errors mapped."""
    try:
        async for chunk, _ in exchange.response.content.iter_chunks():
            yield chunk
    except Exception as exc:
        error = map_transport_error(exc, "streaming from the backend")
        if error is None:
            raise
        raise error from exc


async def close_quietly(exchange: Exchange) -> None:
    with contextlib.suppress(Exception):
        await exchange.aclose()


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
