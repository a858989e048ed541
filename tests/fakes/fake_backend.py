"""A scripted fake OpenAI-compatible backend, served for real over loopback HTTP.

Tests script it with :meth:`FakeBackend.enqueue` (one reply per POST request, in order;
a canned success when the queue is empty) and inspect :attr:`FakeBackend.requests`
afterwards. Replies can stream SSE events with delays and ``:`` keep-alive comments, fail
with any status (and ``Retry-After``), be slow, drop the connection mid-stream, or hold a
stream open after its first event until the test sets a ``threading.Event``; a
stream whose client went away is recorded in :attr:`FakeBackend.cancelled`.

    with FakeBackend(models=["m"]) as backend:
        backend.enqueue(stream(chat_chunks(["Hel", "lo"]), delay=0.05))
        ...  # point the proxy at backend.url
        assert backend.requests[-1].json["messages"][0]["role"] == "system"

``FakeBackend(owned_by="me", reject_json_schema=True)`` looks like llama-cpp-python's
server: that ``owned_by`` in ``/v1/models``, and a 500 for a ``json_schema`` response format.

Broken backends are scripted too: :class:`RawReply` sends any bytes with any status and
content type (a non-JSON 200, say), and a :class:`StreamReply` of raw ``bytes`` events sends
them exactly as given (garbage, other line endings, an unterminated last event, no
``[DONE]``); :func:`raw_stream` splits a byte string into such chunks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

from tests.fakes.server_thread import ServerThread

Event = dict[str, Any] | str | bytes  # a data payload, "[DONE]", ": comment", or raw bytes


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw) if self.raw else None


@dataclass
class JsonReply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class StreamReply:
    events: Sequence[Event]
    delay: float = 0.0  # before each event
    drop_after: int | None = None  # close the connection abruptly after this many events
    headers: dict[str, str] = field(default_factory=dict)
    # Pause after the first event until this is set (or the client leaves): a stream that
    # is provably still running while the test looks at something, however slow the machine.
    hold: threading.Event | None = None


@dataclass
class RawReply:
    """Exactly these bytes as the body (no JSON encoding), e.g. an HTML page with status 200."""

    body: bytes
    status: int = 200
    content_type: str = "text/plain"


Reply = JsonReply | StreamReply | RawReply


# -- canned payloads ----------------------------------------------------------------


def chat_completion(content: str = "ok", model: str = "fake-model", finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def completion(text: str = "ok", model: str = "fake-model", finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def chat_chunks(pieces: Sequence[str], model: str = "fake-model", usage: bool = False) -> list[Event]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events: list[Event] = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": p}, None) for p in pieces]
    events.append(chunk({}, "stop"))
    if usage:
        events.append(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)},
            }
        )
    events.append("[DONE]")
    return events


def completion_chunks(pieces: Sequence[str], model: str = "fake-model", usage: bool = False) -> list[Event]:
    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    events: list[Event] = [chunk(p, None) for p in pieces]
    events.append(chunk("", "stop"))
    if usage:
        events.append(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)},
            }
        )
    events.append("[DONE]")
    return events


def error(status: int, message: str = "fake failure", retry_after: str | None = None) -> JsonReply:
    headers = {"retry-after": retry_after} if retry_after else {}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JsonReply({"error": {"message": message, "type": kind, "param": None, "code": None}}, status, headers)


def stream(
    events: Sequence[Event], delay: float = 0.0, drop_after: int | None = None, hold: threading.Event | None = None
) -> StreamReply:
    return StreamReply(events, delay, drop_after, hold=hold)


def raw_stream(data: bytes, cuts: Sequence[int] = ()) -> StreamReply:
    """A stream sending ``data`` verbatim, cut into chunks at the given offsets."""
    bounds = [0, *sorted(cuts), len(data)]
    return StreamReply([data[a:b] for a, b in itertools.pairwise(bounds) if b > a])


def encode_event(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return (event if event.startswith(":") else f"data: {event}").encode() + b"\n\n"
    return b"data: " + orjson.dumps(event) + b"\n\n"


# -- the backend ----------------------------------------------------------------------


class _Dropped(Exception):
    """Raised inside the app to make uvicorn cut the connection mid-response."""


class FakeBackend:
    def __init__(
        self, models: Sequence[str] = ("fake-model",), owned_by: str = "fake", reject_json_schema: bool = False
    ) -> None:
        self.models = list(models)
        self.owned_by = owned_by
        self.reject_json_schema = reject_json_schema
        self.models_status = 200
        self.requests: list[Recorded] = []
        self.cancelled = threading.Event()  # a client disconnected before its reply was complete
        self.stream_finished = threading.Event()  # a stream was sent to its end
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._server = ServerThread(self, lifespan="off")

    # -- scripting ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, as a proxy or SDK wants it."""
        return self._server.url + "/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget the script and the recordings (for a backend shared by several tests)."""
        with self._lock:
            self._queue.clear()
        self.requests.clear()
        self.models_status = 200
        self.cancelled.clear()
        self.stream_finished.clear()

    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def last(self) -> Recorded:
        return self.posts()[-1]

    def start(self) -> FakeBackend:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeBackend:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        self.requests.append(Recorded(scope["method"], path, headers, raw))
        if scope["method"] == "GET" and path.endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": self.owned_by} for m in self.models]
            body = {"object": "list", "data": data}
            await self._send_json(send, JsonReply(body, self.models_status))
            return
        if self.reject_json_schema and _asks_json_schema(raw):
            # llama-cpp-python's answer (its request model only knows "text" and "json_object").
            await self._send_json(send, error(500, "Input should be 'text' or 'json_object'"))
            return
        with self._lock:
            reply = self._queue.popleft() if self._queue else self._default(path)
        if isinstance(reply, RawReply):
            await self._send_raw(send, reply)
        elif isinstance(reply, JsonReply):
            if reply.delay and await self._client_left_within(receive, reply.delay):
                self.cancelled.set()
                return
            await self._send_json(send, reply)
        else:
            await self._send_stream(receive, send, reply)

    @staticmethod
    async def _client_left_within(receive: Any, seconds: float) -> bool:
        """Wait ``seconds`` (a slow backend), noticing if the client disconnects meanwhile."""

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(disconnect(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _default(path: str) -> Reply:
        if path.endswith("/chat/completions"):
            return JsonReply(chat_completion())
        if path.endswith("/completions"):
            return JsonReply(completion())
        if path.endswith("/embeddings"):
            return JsonReply({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]})
        return error(404, f"no route {path}")

    @staticmethod
    async def _send_json(send: Any, reply: JsonReply) -> None:
        body = orjson.dumps(reply.body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_raw(send: Any, reply: RawReply) -> None:
        headers = [(b"content-type", reply.content_type.encode()), (b"content-length", str(len(reply.body)).encode())]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _send_stream(self, receive: Any, send: Any, reply: StreamReply) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            for number, event in enumerate(reply.events):
                if reply.drop_after is not None and number >= reply.drop_after:
                    raise _Dropped("scripted connection drop")
                if reply.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), reply.delay)
                if gone.is_set():
                    self.cancelled.set()
                    return
                await send({"type": "http.response.body", "body": encode_event(event), "more_body": True})
                if number == 0 and reply.hold is not None:
                    while not reply.hold.is_set() and not gone.is_set():
                        await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.stream_finished.set()
        finally:
            watcher.cancel()


def _asks_json_schema(raw: bytes) -> bool:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    rf = body.get("response_format") if isinstance(body, dict) else None
    return isinstance(rf, dict) and rf.get("type") == "json_schema"


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition()`` until true or the timeout; for cross-thread observations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
