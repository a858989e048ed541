"""The forward call to a backend, on httpcore's connection pool.

httpx stays the API for everything off the hot path (model discovery, readiness); the
per-request forward goes straight to httpcore, httpx's own transport layer, which skips
httpx's request/response model building. Measured here on a bare passthrough:
``httpx.AsyncClient`` +1.0 ms per request, ``httpcore.AsyncConnectionPool`` +0.72 ms.

Transport failures are mapped to the typed errors of :mod:`proxy.errors` here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from proxy.errors import BackendBusy, BackendError, BackendTimeout, BackendUnavailable
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
    if isinstance(exc, httpcore.PoolTimeout):
        return BackendBusy(f"{what}: too many requests in flight to the backend")
    if isinstance(exc, httpcore.TimeoutException):
        return BackendTimeout(f"{what}: the backend did not answer in time")
    if isinstance(exc, httpcore.ConnectError):
        return BackendUnavailable(f"{what}: cannot connect to the backend")
    return BackendUnavailable(f"{what}: the backend connection failed ({type(exc).__name__})")


class Upstream:
    """One shared pool of keep-alive connections to every backend."""

    def __init__(self, connect_timeout: float, read_timeout: float, max_connections: int = 512) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            retries=0,
            network_backend=AsyncioBackend(),
        )
        self._timeouts = {
            "connect": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
            "pool": read_timeout,
        }

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def send(self, method: bytes, url: httpcore.URL, headers: Headers, body: bytes) -> httpcore.Response:
        """Send a request and return once the backend's status and headers are in.

        The caller owns the response and must ``aclose()`` it (closing early aborts the
        backend's work: that is how a client disconnect cancels generation).
        """
        request = httpcore.Request(method, url, headers=headers, content=body, extensions={"timeout": self._timeouts})
        try:
            return await self._pool.handle_async_request(request)
        except httpcore.UnsupportedProtocol as exc:
            raise BackendUnavailable(f"unsupported backend URL: {exc}") from exc
        except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
            raise map_transport_error(exc, "sending to the backend") from exc


async def read_all(response: httpcore.Response) -> bytes:
    """The full body; transport errors mapped; the response closed in every case."""
    try:
        return await response.aread()
    except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
        raise map_transport_error(exc, "reading the backend's response") from exc
    finally:
        await response.aclose()


async def iter_raw(response: httpcore.Response) -> AsyncIterator[bytes]:
    """Body chunks as they arrive (no re-buffering); transport errors mapped."""
    stream = response.stream
    assert hasattr(stream, "__aiter__"), "async response stream expected"
    try:
        async for chunk in stream:
            yield chunk
    except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
        raise map_transport_error(exc, "streaming from the backend") from exc


async def close_quietly(response: httpcore.Response) -> None:
    with contextlib.suppress(Exception):
        await response.aclose()


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
