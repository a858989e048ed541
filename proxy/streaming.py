"""Server-sent events: framing for the pass-through relay, and completion → chat translation.

The relay forwards each *complete* event as soon as its terminating blank line arrives
(never waiting for a fixed-size buffer), so chunks, ``:`` keep-alive comments and
``data: [DONE]`` reach the client as the backend sends them, and a mid-stream error event
can never land inside a half-forwarded one.

For completion-mode models the backend streams ``text_completion`` chunks; they are
rewritten into ``chat.completion.chunk`` events, with the answer's surrounding whitespace
trimmed and anything from the end marker on dropped (in case a backend ignores ``stop``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from prompts.layout import END_MARKER, strip_completion_answer

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
DONE = b"data: [DONE]\n\n"


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EventSplitter:
    """Cuts a byte stream after its last complete SSE event; keeps the partial rest."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        end = -1
        for boundary in _BOUNDARIES:
            at = buffer.rfind(boundary)
            if at >= 0 and at + len(boundary) > end:
                end = at + len(boundary)
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end:]
        return buffer[:end]

    @property
    def pending(self) -> bytes:
        return self._buffer


def iter_events(block: bytes) -> Iterator[tuple[str, bytes]]:
    """``("data", payload)`` or ``("comment", raw line)`` for each event in a complete block."""
    for event in block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
        data_lines = []
        for line in event.split(b"\n"):
            if line.startswith(b":"):
                yield "comment", line
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
        if data_lines:
            yield "data", b"\n".join(data_lines)


class _Answer:
    """Trims an answer streamed in pieces exactly as :func:`strip_completion_answer` would."""

    __slots__ = ("_ended", "_held", "_started")

    def __init__(self) -> None:
        self._held = ""
        self._started = False
        self._ended = False

    def feed(self, text: str) -> str:
        if self._ended:
            return ""
        buffer = self._held + text
        if not self._started:
            buffer = buffer.lstrip()
            if not buffer:
                self._held = ""
                return ""
            self._started = True
        end = buffer.find(END_MARKER)
        if end >= 0:
            self._ended = True
            self._held = ""
            return buffer[:end].rstrip()
        # Hold back what might be the start of the end marker, and trailing whitespace.
        cut = len(buffer)
        for size in range(min(len(END_MARKER) - 1, len(buffer)), 0, -1):
            if buffer.endswith(END_MARKER[:size]):
                cut = len(buffer) - size
                break
        emit = buffer[:cut].rstrip()
        self._held = buffer[len(emit) :]
        return emit

    def finish(self) -> str:
        held, self._held = self._held, ""
        return "" if self._ended else held.rstrip()


def _chat_id(upstream_id: Any) -> str:
    text = str(upstream_id or f"{time.time_ns():x}")
    return text if text.startswith("chatcmpl-") else "chatcmpl-" + text.removeprefix("cmpl-")


def completion_to_chat(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``text_completion`` response as the ``chat.completion`` the client asked for."""
    choices = []
    for position, choice in enumerate(data.get("choices") or []):
        choices.append(
            {
                "index": choice.get("index", position),
                "message": {"role": "assistant", "content": strip_completion_answer(str(choice.get("text") or ""))},
                "logprobs": None,
                "finish_reason": choice.get("finish_reason") or "stop",
            }
        )
    out: dict[str, Any] = {
        "id": _chat_id(data.get("id")),
        "object": "chat.completion",
        "created": data.get("created") or int(time.time()),
        "model": data.get("model") or model,
        "choices": choices,
    }
    if data.get("usage") is not None:
        out["usage"] = data["usage"]
    return out


class CompletionStreamTranslator:
    """Rewrites a ``/v1/completions`` event stream into ``chat.completion.chunk`` events."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._answers: dict[int, _Answer] = {}
        self._id: str | None = None
        self._created: int = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return sse_data(payload)

    def translate(self, block: bytes) -> bytes:
        """Translate a block of complete events; comments pass through unchanged."""
        out: list[bytes] = []
        for kind, payload in iter_events(block):
            if kind == "comment":
                out.append(payload + b"\n\n")
            elif payload.strip() == b"[DONE]":
                out.append(DONE)
            else:
                out.extend(self._data(payload))
        return b"".join(out)

    def _data(self, payload: bytes) -> list[bytes]:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(data, dict):
            return []
        if "error" in data:
            return [sse_data({"error": data["error"]})]
        if self._id is None:
            self._id = _chat_id(data.get("id"))
            self._created = int(data.get("created") or self._created)
            self._model = str(data.get("model") or self._model)
        out = []
        for position, choice in enumerate(data.get("choices") or []):
            index = int(choice.get("index", position))
            answer = self._answers.get(index)
            if answer is None:
                answer = self._answers[index] = _Answer()
                out.append(self._chunk([_delta(index, {"role": "assistant", "content": ""}, None)]))
            text = answer.feed(str(choice.get("text") or ""))
            finish = choice.get("finish_reason")
            if finish is not None:
                text += answer.finish()
            if text or finish is not None:
                out.append(self._chunk([_delta(index, {"content": text} if text else {}, finish)]))
        usage = data.get("usage")
        if usage is not None and self._include_usage:
            out.append(self._chunk([], usage))
        return out


def _delta(index: int, delta: dict[str, Any], finish: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
