"""Connection limits of the real server (`drpo serve`, uvicorn + httptools), over raw sockets.

Header size (431), header and body read timeouts (408), keep-alive timeout, and the
connection cap that sheds idle connections first. The limits are set small through the
environment so every test takes a second or two; the bounds the tests wait for are several
times the configured values, so a loaded machine does not make them flaky.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drpo.embedded import free_port, wait_until_ok
from tests.fakes.fake_backend import FakeBackend, chat_chunks, stream, wait_for

REPO = Path(__file__).resolve().parents[1]
MODEL = "m"
HEADER_LIMIT = 8192
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEPALIVE_TIMEOUT = 1.0
WAIT = 15.0  # how long a test waits for something that should happen within a second or two


@contextlib.contextmanager
def drpo_serve(home: Path, backend_url: str, **limits: str) -> Iterator[int]:
    """`drpo serve --backend ...` in a subprocess with DRPO_* limits; yields its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRPO_")}
    env.update({"DRPO_HOME": str(home), "PYTHONPATH": str(REPO), "DRPO_LOG_LEVEL": "WARNING", **limits})
    home.mkdir(parents=True, exist_ok=True)
    with (home / "serve.log").open("wb") as log:
        command = [sys.executable, "-m", "drpo.cli", "serve", "--port", str(port), "--backend", backend_url]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ok(f"http://127.0.0.1:{port}/health", 60.0, process, name="drpo serve")
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL]) as fake:
        yield fake


@pytest.fixture(scope="module")
def port(backend: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    limits = {
        "DRPO_MAX_HEADER_BYTES": str(HEADER_LIMIT),
        "DRPO_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "DRPO_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "DRPO_KEEPALIVE_TIMEOUT": str(KEEPALIVE_TIMEOUT),
    }
    with drpo_serve(tmp_path_factory.mktemp("limits"), backend.url, **limits) as serving_port:
        yield serving_port


# -- raw HTTP ----------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def get(path: str = "/health", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n" + extra + b"\r\n"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length body (what every response in these tests has)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a response body"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after WAIT."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {sock.gettimeout()}s (received {data[:200]!r})")
    except ConnectionResetError:
        pass
    return data


def assert_openai_error(response: bytes, status: int, code: str) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), response[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]


def chat_request(body: bytes, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        + f"content-length: {length}\r\n\r\n".encode()
        + body
    )


CHAT_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


# -- header size (defect 4) ---------------------------------------------------------------


def test_header_over_the_limit_gets_431(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get(extra=b"x-big: " + b"a" * (HEADER_LIMIT + 100) + b"\r\n"))
        assert_openai_error(read_until_closed(sock), 431, "request_header_fields_too_large")


def test_many_small_headers_count_together(port: int) -> None:
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(HEADER_LIMIT // 100))
    with connect(port) as sock:
        sock.sendall(get(extra=many))
        assert_openai_error(read_until_closed(sock), 431, "request_header_fields_too_large")


def test_endless_header_is_cut_off_while_arriving(port: int) -> None:
    """A header that never ends is refused once it passes the limit, not buffered forever."""
    sent = 0
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nx-big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(256):  # up to 16 MiB, far past the limit
                sock.sendall(b"a" * 65536)
                sent += 65536
                time.sleep(0.005)
        response = read_until_closed(sock)
    assert sent < 16 * 1024 * 1024, "the server accepted the whole 16 MiB header"
    if response:  # the 431 may be lost to a reset while we were still sending
        assert_openai_error(response, 431, "request_header_fields_too_large")


def test_headers_under_the_limit_pass_on_every_request_of_a_connection(port: int) -> None:
    extra = b"x-fine: " + b"b" * (HEADER_LIMIT // 2) + b"\r\n"
    with connect(port) as sock:
        for _ in range(3):  # the count starts again with each request
            sock.sendall(get(extra=extra))
            status, _, _ = read_response(sock)
            assert status == 200


# -- read timeouts and keep-alive (defect 5) ----------------------------------------------


def test_connection_that_sends_nothing_is_closed(port: int) -> None:
    with connect(port) as sock:
        assert read_until_closed(sock) == b""


def test_partial_headers_get_408(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n")
        assert_openai_error(read_until_closed(sock), 408, "request_timeout")


def test_trickled_headers_do_not_extend_the_header_deadline(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(int(WAIT / 0.2)):
                sock.sendall(b"x-%d: y\r\n" % i)
                time.sleep(0.2)
        assert_openai_error(read_until_closed(sock), 408, "request_timeout")


def test_body_shorter_than_content_length_gets_408(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(chat_request(CHAT_BODY[:10], content_length=len(CHAT_BODY)))
        assert_openai_error(read_until_closed(sock), 408, "request_timeout")


def test_slow_but_steady_body_is_not_cut_off(port: int) -> None:
    """The body deadline is about stalls: a body arriving over 2x body_timeout still succeeds."""
    pieces = [CHAT_BODY[i : i + 8] for i in range(0, len(CHAT_BODY), 8)]
    gap = 2 * BODY_TIMEOUT / len(pieces) + 0.05
    assert gap < BODY_TIMEOUT / 2
    with connect(port) as sock:
        sock.sendall(chat_request(b"", content_length=len(CHAT_BODY)))
        for piece in pieces:
            time.sleep(gap)
            sock.sendall(piece)
        status, _, body = read_response(sock)
    assert status == 200, body


def test_request_answered_before_its_body_is_closed_without_a_second_answer(port: int) -> None:
    """413 from the Content-Length alone; the body never comes: closed, and no 408 after the 413."""
    with connect(port) as sock:
        sock.sendall(chat_request(b"", content_length=9 * 1024 * 1024))
        status, _, _ = read_response(sock)
        assert status == 413
        assert read_until_closed(sock) == b""


def test_connection_is_timed_out_after_the_body_of_an_early_answered_request(port: int) -> None:
    """413 first, then the client sends the whole body and goes quiet: still closed."""
    size = 9 * 1024 * 1024
    with connect(port) as sock:
        sock.sendall(chat_request(b"", content_length=size))
        assert read_response(sock)[0] == 413
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"x" * size)
        assert read_until_closed(sock) == b""


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get())
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        # uvicorn's own default is 5 s: a close well before that shows the setting is applied.
        assert time.monotonic() - started < 4.5


def test_stream_lasting_longer_than_every_timeout_completes(port: int, backend: FakeBackend) -> None:
    backend.reset()
    pieces = ["one ", "two ", "three ", "four ", "five"]
    backend.enqueue(stream(chat_chunks(pieces), delay=0.7))  # ~4 s in total
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "stream": True}
    text = ""
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=WAIT) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                text += choices[0].get("delta", {}).get("content") or ""
    assert text == "".join(pieces)


# -- connection cap (defect 5) -------------------------------------------------------------

CAP = 8


@pytest.fixture(scope="module")
def capped_port(backend: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    limits = {"DRPO_MAX_CONNECTIONS": str(CAP), "DRPO_KEEPALIVE_TIMEOUT": "120", "DRPO_HEADER_TIMEOUT": "120"}
    with drpo_serve(tmp_path_factory.mktemp("capped"), backend.url, **limits) as serving_port:
        time.sleep(0.5)  # let the readiness poll's connection go
        yield serving_port


def test_at_the_cap_the_longest_idle_connections_make_room(capped_port: int) -> None:
    idle = []
    try:
        # The oldest: idle between requests (keep-alive). Then fresh connections that sent nothing.
        first = connect(capped_port)
        idle.append(first)
        first.sendall(get())
        assert read_response(first)[0] == 200
        for _ in range(CAP - 1):
            time.sleep(0.05)  # distinct idle-since times
            idle.append(connect(capped_port))
        for shed in idle[:2]:
            newcomer = connect(capped_port)
            idle.append(newcomer)  # stays open: the next newcomer needs room again
            newcomer.sendall(get())
            assert read_response(newcomer)[0] == 200
            # Closed to admit the newcomer, i.e. already: not by a timeout (keep-alive here is 120 s).
            shed.settimeout(3.0)
            assert read_until_closed(shed) == b"", "the longest-idle connection was not closed"
        for sock in idle[2:]:  # the others were left alone and serve requests
            sock.sendall(get())
            assert read_response(sock)[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_when_every_connection_is_busy_a_newcomer_gets_503(capped_port: int, backend: FakeBackend) -> None:
    backend.reset()
    release = threading.Event()  # the streams stay open until the newcomer has been turned away
    backend.enqueue(*(stream(chat_chunks(["a", "b", "c"]), hold=release) for _ in range(CAP)))
    stream_body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True})
    busy = []
    try:
        for _ in range(CAP):
            sock = connect(capped_port)
            sock.sendall(chat_request(stream_body.encode()))
            busy.append(sock)
        # The backend has every request: the server read each one whole, so none is idle.
        assert wait_for(lambda: len(backend.posts()) == CAP, timeout=30.0), f"{len(backend.posts())} of {CAP} arrived"
        with connect(capped_port) as newcomer:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                newcomer.sendall(get())
            assert_openai_error(read_until_closed(newcomer), 503, "too_many_connections")
        release.set()
        for sock in busy:  # the busy ones were not touched
            received = b""
            while b"[DONE]" not in received:
                chunk = sock.recv(65536)
                assert chunk, f"a busy stream was cut: {received[-200:]!r}"
                received += chunk
            assert received.startswith(b"HTTP/1.1 200 ")
    finally:
        release.set()
        for sock in busy:
            sock.close()
