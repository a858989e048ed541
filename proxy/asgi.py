"""Small raw-ASGI helpers for the hot routes (no Request/Response objects per call)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proxy.errors import BodyTooLarge, InvalidRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

WATCH_AFTER = 0.05  # seconds before a request starts watching for its client's disconnect


class ClientDisconnected(Exception):
    """The client went away before we answered; nothing more to send."""


def new_request_id() -> bytes:
    return str(uuid.uuid4()).encode()


def is_uuid(value: bytes) -> bool:
    try:
        uuid.UUID(value.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


async def read_body(receive: Receive, limit: int, content_length: bytes | None) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` as early as possible."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidRequest("invalid Content-Length header") from None
        if declared > limit:
            raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: RawHeaders) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DisconnectWatcher:
    """Cancels the request's task when the client goes away (so the backend stops too).

    Watching costs a task and a ``receive()`` per request, which is a measurable share of
    a fast request's overhead; so the watch starts only once a request has been running
    for :data:`WATCH_AFTER` seconds. A backend then works at most that long for a client
    that left, and fast requests never pay for the watch.

    Must be stopped before the final response message is sent, because after it a
    pending ``receive()`` reports a disconnect.
    """

    __slots__ = ("_receive", "_task", "_timer", "_watch", "disconnected")

    def __init__(self, receive: Receive, after: float | None = None) -> None:
        self.disconnected = False
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._watch: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER if after is None else after, self._start)

    def _start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._task.cancel()
                return

    def stop(self) -> None:
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
