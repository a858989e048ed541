"""The forward transport (:mod:`proxy.upstream`) against real loopback servers.

Each test runs a scripted HTTP/1.1 server (:class:`RawBackend`, asyncio streams) in the
test's own event loop, so the server can misbehave exactly where a real backend does: close
an idle keep-alive socket, drop a request without answering, stop after half a response
head, hold requests, or stream a body far larger than anything that should be buffered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import trustme

from proxy.errors import BackendError, BackendUnavailable
from proxy.upstream import Endpoint, Upstream, close_quietly, iter_raw, read_all
from tests.fakes.proxy_harness import make_settings, running_proxy

KiB = 1024
MiB = 1024 * KiB


@dataclass
class Seen:
    connection: int
    index: int  # 0 for the first request on its connection
    method: str
    path: str
    body: bytes


class RawBackend:
    """A scripted HTTP/1.1 keep-alive server on a free loopback port.

    Paths: ``/ok``; ``/echo`` (the request body back); ``/big/N`` (N bytes, written in
    64 KiB pieces, each counted in :attr:`sent` once the socket took it); ``/hold/S``
    (answers after S seconds; :attr:`max_in_flight` records the peak concurrency).

    ``idle_timeout`` closes a keep-alive socket idle that long. ``race_window`` models the
    race with a client: a request that arrives less than that before the idle timer fires
    is dropped unanswered, as if it had crossed the server's FIN on the wire.
    :attr:`script` holds actions for the next requests: ``"drop"`` (close unanswered),
    ``"drop-if-reused"`` (the same, unless it is its connection's first request),
    ``"partial"`` (half a status line and header, then close), ``"reset"`` (a TCP reset, no
    answer) or ``"partial-reset"`` (half a head, then a reset).
    """

    def __init__(
        self,
        *,
        idle_timeout: float | None = None,
        race_window: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.race_window = race_window
        self.ssl_context = ssl_context
        self.script: collections.deque[str] = collections.deque()
        self.requests: list[Seen] = []
        self.connections = 0
        self.closed_by_client = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the handlers see their sockets closed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self.connections
        self.connections += 1
        self._writers.add(writer)
        loop = asyncio.get_running_loop()
        try:
            index = 0
            while True:
                idle_since = loop.time()
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except TimeoutError:
                    return  # idle keep-alive socket: close it
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                idle = loop.time() - idle_since
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Seen(connection, index, method, path, body))
                index += 1
                if self.idle_timeout is not None and index > 1 and idle >= self.idle_timeout - self.race_window:
                    return  # the server's idle close crossed this request
                action = self.script.popleft() if self.script else "answer"
                if action == "drop" or (action == "drop-if-reused" and index > 1):
                    return
                if action in ("partial", "partial-reset"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-")
                    await writer.drain()
                    if action == "partial-reset":
                        await asyncio.sleep(0.05)  # the bytes reach the client before the reset
                        reset(writer)
                    return
                if action == "reset":
                    reset(writer)
                    return
                await self._answer(path, body, writer)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        def head(length: int) -> bytes:
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % length

        if path.endswith("/models"):
            models = b'{"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "test"}]}'
            writer.write(head(len(models)) + models)
        elif path.endswith("/echo"):
            writer.write(head(len(body)) + body)
        elif "/big/" in path:
            total = int(path.rsplit("/", 1)[1])
            writer.write(head(total))
            piece = b"x" * (64 * KiB)
            left = total
            while left > 0:
                part = piece[: min(left, len(piece))]
                writer.write(part)
                await writer.drain()
                self.sent += len(part)
                left -= len(part)
        elif "/hold/" in path:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            finally:
                self.in_flight -= 1
            writer.write(head(2) + b"{}")
        else:
            writer.write(head(11) + b'{"ok":true}')
        await writer.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing server or a full accept queue does."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class BackendThread:
    """A :class:`RawBackend` on its own event loop in a thread, for a proxy to forward to."""

    def __init__(self, **options: Any) -> None:
        self.backend = RawBackend(**options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-backend", daemon=True)

    def __enter__(self) -> RawBackend:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.backend.__aenter__(), self._loop).result(10)
        return self.backend

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.backend.__aexit__(None, None, None), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def post(upstream: Upstream, backend: RawBackend, path: str, body: bytes = b"{}") -> bytes:
    endpoint = Endpoint.parse(backend.url)
    headers = [(b"host", endpoint.host_header), (b"content-length", str(len(body)).encode())]
    exchange = await upstream.send(b"POST", endpoint.url(path.encode()), headers, body)
    assert exchange.status == 200
    return await read_all(exchange)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def upstream(**options: Any) -> Upstream:
    return Upstream(2.0, 20.0, **options)


# -- keep-alive ------------------------------------------------------------------------


def test_sequential_requests_reuse_one_connection() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            for _ in range(5):
                assert await post(client, backend, "/ok") == b'{"ok":true}'
            await client.aclose()
        assert backend.connections == 1
        assert [seen.index for seen in backend.requests] == [0, 1, 2, 3, 4]

    run(main)


def test_an_expired_keepalive_connection_is_closed_and_replaced() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream(keepalive_expiry=0.2)
            await post(client, backend, "/ok")
            await asyncio.sleep(0.5)
            await post(client, backend, "/ok")
            assert backend.connections == 2
            await eventually(lambda: backend.closed_by_client >= 1)  # we closed the expired one
            await client.aclose()

    run(main)


def test_a_socket_the_server_closed_while_idle_is_not_used() -> None:
    async def main() -> None:
        async with RawBackend(idle_timeout=0.1) as backend:
            client = upstream(keepalive_expiry=30.0)
            await post(client, backend, "/ok")
            await asyncio.sleep(0.5)  # the server has closed our idle socket by now
            assert await post(client, backend, "/ok") == b'{"ok":true}'
            await client.aclose()
        assert backend.connections == 2
        assert len(backend.requests) == 2

    run(main)


def test_the_default_keepalive_expiry_is_shorter_than_common_backends() -> None:
    # uvicorn (vLLM, llama-cpp-python), llama.cpp's server and Node close idle sockets after 5 s.
    assert Upstream(2.0, 20.0).keepalive_expiry < 5.0


def test_aclose_closes_idle_connections() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await asyncio.gather(post(client, backend, "/hold/0.2"), post(client, backend, "/hold/0.2"))
            assert backend.connections == 2
            await client.aclose()
            await eventually(lambda: backend.closed_by_client == 2)

    run(main)


# -- defect 8: a stale keep-alive connection fails a request -------------------------------


def test_requests_racing_the_servers_idle_close_all_succeed() -> None:
    """The server closes sockets idle for 1 s; requests spaced 0.2 s apart arrive inside its
    0.9 s race window, so each one after the first is dropped on its reused connection.
    Before the fix each of those was a 502; now each is re-sent once on a fresh connection.
    (The window is wide so that a request delayed by a loaded machine still lands in it.)"""

    async def main() -> None:
        async with RawBackend(idle_timeout=1.0, race_window=0.9) as backend:
            client = upstream(keepalive_expiry=30.0)
            failures = 0
            for _ in range(8):
                try:
                    await post(client, backend, "/echo", b'{"n": 1}')
                except BackendError:
                    failures += 1
                await asyncio.sleep(0.2)
            await client.aclose()
        assert failures == 0
        dropped = [seen for seen in backend.requests if seen.index > 0]
        assert dropped, "the race window was never hit: the test proves nothing"
        assert all(seen.body == b'{"n": 1}' for seen in backend.requests)

    run(main)


def test_the_proxy_answers_every_request_racing_the_backends_idle_close(tmp_path: Path) -> None:
    """Defect 8 as a client saw it: 502s from the proxy in front of a backend whose keep-alive
    timeout (here 1 s, with a 0.9 s race window) is shorter than the proxy's."""
    with BackendThread(idle_timeout=1.0, race_window=0.9) as backend:
        with running_proxy(make_settings(tmp_path, backend.url)) as proxy, httpx.Client(timeout=10) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            statuses = []
            for _ in range(8):
                time.sleep(0.2)
                statuses.append(client.post(f"{proxy}/v1/chat/completions", json=body).status_code)
        raced = [seen for seen in backend.requests if seen.path.endswith("/chat/completions") and seen.index > 0]
    assert statuses == [200] * 8
    assert raced, "the race window was never hit: the test proves nothing"


def test_a_request_dropped_on_a_reused_connection_is_resent_once_with_its_body() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            body = b'{"pad": "' + b"y" * (100 * KiB) + b'"}'
            await post(client, backend, "/ok")
            backend.script.append("drop")
            assert await post(client, backend, "/echo", body) == body
            await client.aclose()
        assert [(seen.connection, seen.index) for seen in backend.requests] == [(0, 0), (0, 1), (1, 0)]
        assert backend.requests[1].body == backend.requests[2].body == body

    run(main)


def test_a_reused_connection_reset_before_any_reply_byte_is_retried() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await post(client, backend, "/ok")
            backend.script.append("reset")
            assert await post(client, backend, "/ok") == b'{"ok":true}'
            await client.aclose()
        assert len(backend.requests) == 3

    run(main)


def test_no_retry_when_the_reset_came_after_part_of_the_reply() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await post(client, backend, "/ok")
            backend.script.append("partial-reset")
            with pytest.raises(BackendUnavailable):
                await post(client, backend, "/ok")
            await client.aclose()
        assert len(backend.requests) == 2

    run(main)


def test_the_retry_goes_to_a_fresh_connection_not_another_idle_one() -> None:
    """After a burst, several idle connections wait in the pool and the backend has closed
    them all: the retry must open a new connection rather than take the next stale one."""

    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await asyncio.gather(*(post(client, backend, "/hold/0.2") for _ in range(3)))
            assert backend.connections == 3
            backend.script.extend(["drop-if-reused"] * 3)
            assert await post(client, backend, "/ok") == b'{"ok":true}'
            await client.aclose()
        last = backend.requests[-1]
        assert (last.connection, last.index) == (3, 0)

    run(main)


def test_the_retry_happens_at_most_once() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await post(client, backend, "/ok")
            backend.script.extend(["drop", "drop"])
            with pytest.raises(BackendUnavailable):
                await post(client, backend, "/ok")
            await client.aclose()
        assert len(backend.requests) == 3

    run(main)


def test_a_fresh_connections_failure_is_not_retried() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            backend.script.append("drop")
            with pytest.raises(BackendUnavailable):
                await post(client, backend, "/ok")
            await client.aclose()
        assert len(backend.requests) == 1

    run(main)


def test_no_retry_once_response_bytes_arrived() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            await post(client, backend, "/ok")
            backend.script.append("partial")
            with pytest.raises(BackendUnavailable):
                await post(client, backend, "/ok")
            await client.aclose()
        assert len(backend.requests) == 2

    run(main)


# -- bodies, backpressure, limits ------------------------------------------------------------


def test_bodies_over_64_kib_both_ways() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            body = bytes(range(256)) * (1 * MiB // 256 + 3)  # ~1 MiB, not a multiple of any buffer size
            assert await post(client, backend, "/echo", body) == body
            assert await post(client, backend, f"/big/{5 * MiB + 17}") == b"x" * (5 * MiB + 17)
            await client.aclose()
        assert backend.connections == 1

    run(main)


def test_a_slow_reader_holds_back_the_backend_instead_of_buffering() -> None:
    """A 256 MiB response read one chunk and then left alone: the server must stall once our
    buffer and the kernel's socket buffers are full (tens of MiB at most on loopback, whose
    receive buffer autotunes up to 32 MiB here), not keep sending into our memory."""
    total = 256 * MiB

    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream()
            endpoint = Endpoint.parse(backend.url)
            exchange = await client.send(
                b"POST", endpoint.url(f"/big/{total}".encode()), [(b"host", endpoint.host_header)], b""
            )
            chunks = iter_raw(exchange)
            consumed = len(await anext(chunks))
            # Wait until the server makes no progress for a while (it is blocked on a full socket).
            last, still = -1, 0
            deadline = time.monotonic() + 30
            while still < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                still = still + 1 if backend.sent == last else 0
                last = backend.sent
            assert backend.sent - consumed < 64 * MiB
            # Reading goes on normally after the pause.
            for _ in range(50):
                consumed += len(await anext(chunks))
            await chunks.aclose()
            await close_quietly(exchange)
            await client.aclose()
            assert consumed < total

    run(main)


def test_requests_beyond_the_per_origin_limit_wait_instead_of_failing() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream(max_connections_per_origin=2)
            results = await asyncio.gather(*(post(client, backend, "/hold/0.1") for _ in range(7)))
            await client.aclose()
        assert results == [b"{}"] * 7
        assert backend.max_in_flight == 2
        assert backend.connections == 2

    run(main)


def test_waiting_for_a_free_connection_is_not_bounded_by_the_connect_timeout() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = Upstream(0.2, 20.0, max_connections_per_origin=1)  # a 0.2 s connect timeout
            results = await asyncio.gather(*(post(client, backend, "/hold/0.6") for _ in range(2)))
            await client.aclose()
        assert results == [b"{}"] * 2

    run(main)


def test_the_per_origin_limit_has_a_sensible_default() -> None:
    assert 32 <= Upstream(2.0, 20.0).max_connections_per_origin <= 1024


def test_a_cancelled_request_gives_its_slot_back() -> None:
    async def main() -> None:
        async with RawBackend() as backend:
            client = upstream(max_connections_per_origin=1)
            task = asyncio.create_task(post(client, backend, "/hold/30"))
            await eventually(lambda: backend.in_flight == 1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await post(client, backend, "/ok") == b'{"ok":true}'
            await client.aclose()

    run(main)


# -- TLS ---------------------------------------------------------------------------------------


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_tls_to_a_backend_with_a_local_ca() -> None:
    server_context, client_context = tls_contexts()

    async def main() -> None:
        async with RawBackend(ssl_context=server_context) as backend:
            client = upstream(ssl_context=client_context)
            body = b"z" * (200 * KiB)
            assert await post(client, backend, "/echo", body) == body
            assert await post(client, backend, f"/big/{3 * MiB}") == b"x" * (3 * MiB)
            await client.aclose()
        assert backend.connections == 1  # kept alive over TLS too

    run(main)


def test_tls_with_an_untrusted_certificate_fails_cleanly() -> None:
    server_context, _ = tls_contexts()

    async def main() -> None:
        async with RawBackend(ssl_context=server_context) as backend:
            client = upstream()  # the system's trust store does not know our local CA
            with pytest.raises(BackendUnavailable):
                await post(client, backend, "/ok")
            await client.aclose()

    run(main)
