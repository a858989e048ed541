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
from collections.abc import AsyncGenerator, Iterable
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
    keep-alive connection back to the pool, or drops a dirty one, and frees its slot under
    the per-origin limit; closing before the body is read aborts the backend's work (that is
    how a client disconnect cancels generation).
    """

    __slots__ = ("_closed", "_connection", "_key", "_upstream", "response")

    def __init__(self, upstream: Upstream, key: _Key, connection: _Connection, response: httpcore.Response) -> None:
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

# A reused keep-alive connection that fails with one of these before any reply byte came was
# (almost surely) closed by the backend as we picked it: its idle timer and our request
# crossed on the wire. Timeouts are not among them: a slow backend is not a stale socket.
_STALE_CONNECTION_ERRORS = (
    httpcore.ReadError,
    httpcore.WriteError,
    httpcore.RemoteProtocolError,
    httpcore.ConnectionNotAvailable,
)


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    """The shared network backend, seen by one connection: remembers the stream it opened."""

    __slots__ = ("_backend", "stream")

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend
        self.stream: httpcore.AsyncNetworkStream | None = None

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return self.stream

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        self.stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return self.stream

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _Connection:
    """An httpcore connection and the count of bytes it has received so far."""

    __slots__ = ("http", "network")

    def __init__(self, http: httpcore.AsyncHTTPConnection, network: _RecordingBackend) -> None:
        self.http = http
        self.network = network

    @property
    def received(self) -> int:
        stream = self.network.stream
        return 0 if stream is None else int(stream.get_extra_info("bytes_received") or 0)


class Upstream:
    """Keep-alive connections to every backend, one idle stack per origin.

    httpcore's own ``AsyncConnectionPool`` re-scans every queued request against every
    connection on each state change (quadratic in concurrency: a quarter of the proxy's CPU
    at 16 concurrent requests in our profile). Each request here takes the most recently
    used idle connection (O(1)); connections are still httpcore's ``AsyncHTTPConnection``,
    so HTTP/1.1 parsing, TLS and timeouts stay httpcore's.

    At most ``max_connections_per_origin`` requests are in flight to one origin; more wait
    for a free slot (up to the read timeout), they do not fail. Idle connections expire
    after ``keepalive_expiry`` seconds, under the 5 s of uvicorn (vLLM, llama-cpp-python),
    llama.cpp's server and Node, so such a backend rarely closes a socket first; when one
    does close a socket just as we reuse it, the request is sent again once on a fresh
    connection (only if no byte of the reply had arrived).
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
        self._backend = AsyncioBackend()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._slots: dict[_Key, asyncio.Semaphore] = {}
        self._ssl_context = ssl_context
        self._closing: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self._pool_timeout = read_timeout
        self._extensions = {
            "timeout": {"connect": connect_timeout, "read": read_timeout, "write": read_timeout, "pool": read_timeout}
        }

    async def aclose(self) -> None:
        idle = [c for stack in self._idle.values() for c in stack]
        self._idle.clear()
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.http.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _checkout(self, key: _Key) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            connection = stack.pop()
            if connection.http.is_idle() and not connection.http.has_expired():
                return connection
            self._discard(connection)
        return None

    def _discard(self, connection: _Connection) -> None:
        if connection.http.is_closed():
            return
        # Closing a plain connection never blocks; schedule it rather than await in a sync path.
        task = asyncio.get_running_loop().create_task(connection.http.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _release(self, key: _Key, connection: _Connection) -> None:
        self._slots[key].release()
        if connection.http.is_idle() and not connection.http.has_expired():
            self._idle.setdefault(key, []).append(connection)
        else:
            self._discard(connection)

    def _new_connection(self, url: httpcore.URL) -> _Connection:
        ssl_context = None
        if url.scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            ssl_context = self._ssl_context
        network = _RecordingBackend(self._backend)
        http = httpcore.AsyncHTTPConnection(
            origin=url.origin,
            ssl_context=ssl_context,
            keepalive_expiry=self.keepalive_expiry,
            network_backend=network,
        )
        return _Connection(http, network)

    async def _take_slot(self, key: _Key) -> asyncio.Semaphore:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.max_connections_per_origin)
        if not slots.locked():
            await slots.acquire()  # free: returns at once
            return slots
        try:
            async with asyncio.timeout(self._pool_timeout):
                await slots.acquire()
        except TimeoutError:
            raise BackendTimeout("waiting for a free connection to the backend timed out") from None
        return slots

    async def _request(
        self, connection: _Connection, method: bytes, url: httpcore.URL, headers: Headers, body: bytes
    ) -> httpcore.Response:
        request = httpcore.Request(method, url, headers=headers, content=body, extensions=self._extensions)
        try:
            return await connection.http.handle_async_request(request)
        except BaseException:
            self._discard(connection)
            raise

    async def send(self, method: bytes, url: httpcore.URL, headers: Headers, body: bytes) -> Exchange:
        """Send a request; returns once the backend's status and headers are in."""
        key = (url.scheme, url.host, url.port or 0)
        slots = await self._take_slot(key)
        try:
            connection = self._checkout(key)
            if connection is not None:
                before = connection.received
                try:
                    return Exchange(self, key, connection, await self._request(connection, method, url, headers, body))
                except _STALE_CONNECTION_ERRORS:
                    if connection.received != before:
                        raise  # part of a reply came: the backend saw the request, never send it twice
            connection = self._new_connection(url)
            return Exchange(self, key, connection, await self._request(connection, method, url, headers, body))
        except BaseException as exc:
            slots.release()
            if isinstance(exc, httpcore.UnsupportedProtocol):
                raise BackendUnavailable(f"unsupported backend URL: {exc}") from exc
            if isinstance(exc, _TRANSPORT_ERRORS):
                raise map_transport_error(exc, "sending to the backend") from exc
            raise


_TRANSPORT_ERRORS = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.ConnectionNotAvailable,
)


async def read_all(exchange: Exchange) -> bytes:
    """The full body; transport errors mapped; the exchange closed in every case."""
    try:
        return await exchange.response.aread()
    except _TRANSPORT_ERRORS as exc:
        raise map_transport_error(exc, "reading the backend's response") from exc
    finally:
        await exchange.aclose()


async def iter_raw(exchange: Exchange) -> AsyncGenerator[bytes, None]:
    """Body chunks as they arrive (no re-buffering); transport errors mapped."""
    stream = exchange.response.stream
    assert hasattr(stream, "__aiter__"), "async response stream expected"
    try:
        async for chunk in stream:
            yield chunk
    except _TRANSPORT_ERRORS as exc:
        raise map_transport_error(exc, "streaming from the backend") from exc


async def close_quietly(exchange: Exchange) -> None:
    with contextlib.suppress(Exception):
        await exchange.aclose()


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
