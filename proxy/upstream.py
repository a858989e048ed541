"""The forward call to a backend, on httpcore connections.

httpx stays the API for everything off the hot path (model discovery, readiness); the
per-request forward goes straight to httpcore, httpx's own transport layer, which skips
httpx's request/response model building (measured here on a bare passthrough:
``httpx.AsyncClient`` +1.0 ms per request, ``httpcore.AsyncConnectionPool`` +0.72 ms).
Two further cuts, both measured (see BENCHMARKS.md): our own O(1) keep-alive stack of
``httpcore.AsyncHTTPConnection`` instead of httpcore's pool, and a lean asyncio network
backend (:mod:`proxy.netstream`) under them.

Transport failures are mapped to the typed errors of :mod:`proxy.errors` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from proxy.errors import BackendError, BackendTimeout, BackendUnavailable
from proxy.netstream import AsyncioBackend

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Endpoint:
    """A backend's base URL, pre-split into the pieces httpcore wants."""

    scheme: bytes
    host: bytes
    port: int
    base_path: bytes
    host_header: bytes

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
        return cls(scheme.encode(), host.encode(), port, parts.path.rstrip("/").encode(), host_header.encode())

    def url(self, path: bytes) -> httpcore.URL:
        return httpcore.URL(scheme=self.scheme, host=self.host, port=self.port, target=self.base_path + path)


def map_transport_error(exc: Exception, what: str) -> BackendError:
    """One mapping from httpcore's exceptions to ours."""
    if isinstance(exc, httpcore.TimeoutException):
        return BackendTimeout(f"{what}: the backend did not answer in time")
    if isinstance(exc, httpcore.ConnectError):
        return BackendUnavailable(f"{what}: cannot connect to the backend")
    return BackendUnavailable(f"{what}: the backend connection failed ({type(exc).__name__})")


class Exchange:
    """One forwarded request: the backend's response plus the connection it came on.

    Closing it (always, via :func:`read_all` / :func:`close_quietly`) hands a clean
    keep-alive connection back to the pool, or drops a dirty one; closing before the body
    is read aborts the backend's work (that is how a client disconnect cancels generation).
    """

    __slots__ = ("_closed", "_connection", "_key", "_upstream", "response")

    def __init__(
        self, upstream: Upstream, key: _Key, connection: httpcore.AsyncHTTPConnection, response: httpcore.Response
    ) -> None:
        self._upstream = upstream
        self._key = key
        self._connection = connection
        self.response = response
        self._closed = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Headers:
        return self.response.headers

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.response.aclose()
        finally:
            self._upstream._release(self._key, self._connection)


_Key = tuple[bytes, bytes, int]


class Upstream:
    """Keep-alive connections to every backend, one idle stack per origin.

    httpcore's own ``AsyncConnectionPool`` re-scans every queued request against every
    connection on each state change (quadratic in concurrency: a quarter of the proxy's CPU
    at 16 concurrent requests in our profile). Each request here takes the most recently
    used idle connection (O(1)); connections are still httpcore's ``AsyncHTTPConnection``,
    so HTTP/1.1 parsing, TLS and timeouts stay httpcore's.
    """

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        max_idle_per_origin: int = 256,
        keepalive_expiry: float = 4.0,  # under uvicorn's 5 s default, so the server rarely closes first
    ) -> None:
        self._backend = AsyncioBackend()
        self._idle: dict[_Key, list[httpcore.AsyncHTTPConnection]] = {}
        self._max_idle = max_idle_per_origin
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context: ssl.SSLContext | None = None
        self._closing: set[httpcore.AsyncHTTPConnection] = set()
        self._timeouts = {
            "connect": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
            "pool": read_timeout,
        }

    async def aclose(self) -> None:
        idle = [c for stack in self._idle.values() for c in stack]
        self._idle.clear()
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.aclose()

    def _checkout(self, key: _Key) -> httpcore.AsyncHTTPConnection | None:
        stack = self._idle.get(key)
        while stack:
            connection = stack.pop()
            if connection.is_idle() and not connection.has_expired():
                return connection
            self._discard(connection)
        return None

    def _discard(self, connection: httpcore.AsyncHTTPConnection) -> None:
        # Closing a plain connection never blocks; schedule it rather than await in a sync path.
        task = asyncio.get_running_loop().create_task(connection.aclose())
        self._closing.add(connection)
        task.add_done_callback(lambda _: self._closing.discard(connection))

    def _release(self, key: _Key, connection: httpcore.AsyncHTTPConnection) -> None:
        if connection.is_idle() and not connection.has_expired():
            stack = self._idle.setdefault(key, [])
            if len(stack) < self._max_idle:
                stack.append(connection)
                return
        if not connection.is_closed():
            self._discard(connection)

    def _new_connection(self, url: httpcore.URL) -> httpcore.AsyncHTTPConnection:
        ssl_context = None
        if url.scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            ssl_context = self._ssl_context
        return httpcore.AsyncHTTPConnection(
            origin=url.origin,
            ssl_context=ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._backend,
        )

    async def send(self, method: bytes, url: httpcore.URL, headers: Headers, body: bytes) -> Exchange:
        """Send a request; returns once the backend's status and headers are in."""
        key = (url.scheme, url.host, url.port or 0)
        connection = self._checkout(key) or self._new_connection(url)
        request = httpcore.Request(method, url, headers=headers, content=body, extensions={"timeout": self._timeouts})
        try:
            response = await connection.handle_async_request(request)
        except BaseException as exc:
            self._discard(connection)
            if isinstance(exc, httpcore.UnsupportedProtocol):
                raise BackendUnavailable(f"unsupported backend URL: {exc}") from exc
            if isinstance(exc, (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError)):
                raise map_transport_error(exc, "sending to the backend") from exc
            raise
        return Exchange(self, key, connection, response)


async def read_all(exchange: Exchange) -> bytes:
    """The full body; transport errors mapped; the exchange closed in every case."""
    try:
        return await exchange.response.aread()
    except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
        raise map_transport_error(exc, "reading the backend's response") from exc
    finally:
        await exchange.aclose()


async def iter_raw(exchange: Exchange) -> AsyncIterator[bytes]:
    """Body chunks as they arrive (no re-buffering); transport errors mapped."""
    stream = exchange.response.stream
    assert hasattr(stream, "__aiter__"), "async response stream expected"
    try:
        async for chunk in stream:
            yield chunk
    except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
        raise map_transport_error(exc, "streaming from the backend") from exc


async def close_quietly(exchange: Exchange) -> None:
    with contextlib.suppress(Exception):
        await exchange.aclose()


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
