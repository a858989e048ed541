"""Server-sent events: framing for the pass-through relay, and completion → chat translation.

The relay forwards each *complete* event as soon as its terminating blank line arrives
(never waiting for a fixed-size buffer), so chunks, ``:`` keep-alive comments and
``data: [DONE]`` reach the client as the backend sends them, and a mid-stream error event
can never land inside a half-forwarded one.

For completion-mode models the backend streams ``text_completion`` chunks; they are
rewritten into ``chat.completion.chunk`` events, with the answer's surrounding whitespace
trimmed and anything from the end marker on dropped (in case a backend ignores ``stop``).

A backend's output is checked where it is parsed anyway: an event the translator (or
:class:`proxy.llamacpp.UsageFiller`) cannot read as a chunk raises
:class:`~proxy.errors.BadBackendResponse`, which the relay turns into a final
``data: {"error": ...}`` event. How a stream ends is checked on every path (no parsing
needed): without ``data: [DONE]``, or in the middle of an event, it gets an error event too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson

from prompts.layout import END_MARKER, strip_completion_answer
from proxy.errors import BadBackendResponse, stream_error_fields

DONE = b"data: [DONE]\n\n"
_DONE_LINE = re.compile(rb"(?:\A|(?<=[\r\n]))data: ?\[DONE\][ \t]*(?:\r\n|\r|\n|\Z)")


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def has_done(block: bytes) -> bool:
    """Whether complete events hold the ``data: [DONE]`` line (a substring test first: it is on the hot path)."""
    return b"[DONE]" in block and _DONE_LINE.search(block) is not None


def ends_with_error_event(block: bytes) -> bool:
    """Whether the last data event of a block of complete events is an ``{"error": ...}`` object."""
    payloads = [payload for kind, payload in iter_events(block) if kind == "data"]
    if not payloads:
        return False
    try:
        data = orjson.loads(payloads[-1])
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "error" in data


class EventSplitter:
    """Cuts a byte stream after its last complete SSE event; keeps the partial rest."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        # An SSE line ends with CRLF, LF or CR, and an event with an empty line. Two line ends
        # in a row always hold LF LF, LF CR or CR CR (CR then LF is one CRLF), and each of those
        # pairs is a line end followed by the start of another: so the last such pair marks the
        # end of the last complete event, whatever mix of line endings the backend uses.
        buffer = self._buffer + data if self._buffer else data
        end = max(buffer.rfind(b"\n\n"), buffer.rfind(b"\n\r"), buffer.rfind(b"\r\r"))
        if end < 0:
            self._buffer = buffer
            return b""
        end += 2
        if buffer[end - 1 : end] == b"\r" and buffer[end : end + 1] == b"\n":
            end += 1  # the blank line ended with CRLF: keep it whole
        # A blank line ending in CR at the very end may yet get its LF: that LF then starts
        # the next block, where it reads as one more empty line (no event), as the spec says.
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
    usable = isinstance(upstream_id, str | int) and not isinstance(upstream_id, bool) and upstream_id
    text = str(upstream_id) if usable else f"{time.time_ns():x}"
    return text if text.startswith("chatcmpl-") else "chatcmpl-" + text.removeprefix("cmpl-")


class MalformedEvent(BadBackendResponse):
    """A stream event that cannot be read; ``partial`` is the output for the block's events before it.

    A block may hold several events (they arrive together under load): the good ones before
    the bad one still go to the client, then the error event.
    """

    def __init__(self, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.partial = partial


# Where each event of a block of complete events ends: a line end, then the blank line's end.
# The first line end is matched whole (CR before LF is one CRLF, never two line ends).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")


def raw_events(block: bytes) -> Iterator[tuple[int, bytes]]:
    """``(start offset, bytes)`` of each event of a block of complete events, in the block's own bytes."""
    start = 0
    for match in _EVENT_END.finditer(block):
        yield start, block[start : match.end()]
        start = match.end()
    if start < len(block):
        yield start, block[start:]


def parse_event(payload: bytes) -> dict[str, Any]:
    """A data event's JSON object; :class:`BadBackendResponse` for anything else."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BadBackendResponse("the backend sent a stream event that is not JSON") from None
    if not isinstance(data, dict):
        raise BadBackendResponse("the backend sent a stream event that is not a JSON object")
    return data


def _bad(what: str) -> BadBackendResponse:
    return BadBackendResponse(f"the backend sent a malformed completion: {what}")


def checked_choices(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``choices`` of a response or chunk: absent/null, or a list of objects."""
    choices = data.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise _bad("'choices' is not a list of objects")
    return choices


def checked_usage(data: dict[str, Any]) -> dict[str, Any] | None:
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise _bad("'usage' is not an object")
    return usage


def _index(choice: dict[str, Any], position: int) -> int:
    index = choice.get("index", position)
    if not isinstance(index, int) or isinstance(index, bool):
        raise _bad("a choice's 'index' is not an integer")
    return index


def _optional_str(choice: dict[str, Any], field: str) -> str | None:
    value = choice.get(field)
    if value is not None and not isinstance(value, str):
        raise _bad(f"a choice's {field!r} is not a string")
    return value


def _created(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53 else default


def _model(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def completion_to_chat(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``text_completion`` response as the ``chat.completion`` the client asked for."""
    choices = []
    for position, choice in enumerate(checked_choices(data)):
        choices.append(
            {
                "index": _index(choice, position),
                "message": {
                    "role": "assistant",
                    "content": strip_completion_answer(_optional_str(choice, "text") or ""),
                },
                "logprobs": None,
                "finish_reason": _optional_str(choice, "finish_reason") or "stop",
            }
        )
    out: dict[str, Any] = {
        "id": _chat_id(data.get("id")),
        "object": "chat.completion",
        "created": _created(data.get("created"), int(time.time())),
        "model": _model(data.get("model"), model),
        "choices": choices,
    }
    usage = checked_usage(data)
    if usage is not None:
        out["usage"] = usage
    return out


class CompletionStreamTranslator:
    """Rewrites a ``/v1/completions`` event stream into ``chat.completion.chunk`` events.

    Raises :class:`MalformedEvent` for an event it cannot read as a completion chunk.
    """

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
                try:
                    out.extend(self._data(parse_event(payload)))
                except BadBackendResponse as exc:
                    raise MalformedEvent(exc.message, b"".join(out)) from None
                except orjson.JSONEncodeError:  # e.g. a usage object nested deeper than orjson writes
                    raise MalformedEvent(_bad("a value that cannot be re-encoded").message, b"".join(out)) from None
        return b"".join(out)

    def _data(self, data: dict[str, Any]) -> list[bytes]:
        if "error" in data:
            return [sse_data({"error": stream_error_fields(data["error"])})]
        choices = checked_choices(data)
        usage = checked_usage(data)
        if self._id is None:
            self._id = _chat_id(data.get("id"))
            self._created = _created(data.get("created"), self._created)
            self._model = _model(data.get("model"), self._model)
        out = []
        for position, choice in enumerate(choices):
            index = _index(choice, position)
            text = _optional_str(choice, "text") or ""
            finish = _optional_str(choice, "finish_reason")
            answer = self._answers.get(index)
            if answer is None:
                answer = self._answers[index] = _Answer()
                out.append(self._chunk([_delta(index, {"role": "assistant", "content": ""}, None)]))
            text = answer.feed(text)
            if finish is not None:
                text += answer.finish()
            if text or finish is not None:
                out.append(self._chunk([_delta(index, {"content": text} if text else {}, finish)]))
        if usage is not None and self._include_usage:
            out.append(self._chunk([], usage))
        return out


def _delta(index: int, delta: dict[str, Any], finish: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
