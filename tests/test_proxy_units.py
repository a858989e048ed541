"""Unit tests of the proxy's small pure pieces: SSE framing, answer trimming, error reshaping, keys."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompts.layout import END_MARKER, strip_completion_answer
from proxy.auth import KeyChecker
from proxy.errors import Unauthorized, upstream_error
from proxy.streaming import CompletionStreamTranslator, EventSplitter, iter_events, sse_data

_LINE_ENDS = st.sampled_from(["\n", "\r", "\r\n"])
_SSE_LINES = st.sampled_from(["data: a", "data:b", "data: [DONE]", ": ping", "event: x", "id: 7", 'data: {"k": 1}'])


@st.composite
def sse_streams(draw: st.DrawFn) -> list[str]:
    """Events of one to three lines, every line end (and each blank line) CRLF, LF or CR at random."""
    events = []
    for _ in range(draw(st.integers(0, 6))):
        lines = draw(st.lists(_SSE_LINES, min_size=1, max_size=3))
        text = "".join(line + draw(_LINE_ENDS) for line in lines)
        blank = draw(_LINE_ENDS)
        if text.endswith("\r") and blank == "\n":
            blank = "\r\n"  # CR then LF would be one line end, not a line end and a blank line
        events.append(text + blank)
    return events


def _spec_events(data: bytes) -> tuple[list[list[bytes]], int]:
    """Reference parse per the SSE spec: the complete events' lines, and where the last one ended.

    A CR at the very end counts as a line end (an LF after it would make it CRLF, still one).
    """
    events: list[list[bytes]] = []
    lines: list[bytes] = []
    line_start = position = end = 0
    while position < len(data):
        if data[position] in b"\r\n":
            line = data[line_start:position]
            position += 2 if data[position : position + 2] == b"\r\n" else 1
            if line:
                lines.append(line)
            elif lines:
                events.append(lines)
                lines = []
                end = position
            line_start = position
        else:
            position += 1
    return events, end


@given(sse_streams(), st.data())
def test_splitter_releases_each_event_when_complete_whatever_the_line_ends_and_chunking(
    events: list[str], data: st.DataObject
) -> None:
    stream = "".join(events).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = EventSplitter()
    out = b""
    for end in [*cuts, len(stream)]:
        block = splitter.feed(stream[len(out) + len(splitter.pending) : end])
        out += block
        # Forwarded bytes are the stream's own; every complete event is out, nothing incomplete is.
        assert stream.startswith(out)
        complete, _ = _spec_events(stream[:end])
        assert _spec_events(out)[0] == complete
        if block:
            assert _spec_events(out)[1] == len(out)
    assert out + splitter.pending == stream
    assert splitter.pending.strip(b"\r\n") == b""  # at most the LF of a CRLF cut off after its CR
    # And iter_events reads the forwarded blocks as the spec reads the whole stream.
    expected = []
    for lines in _spec_events(stream)[0]:
        values = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if values:
            expected.append(b"\n".join(values))
    assert [payload for kind, payload in iter_events(out) if kind == "data"] == expected


def test_iter_events_reads_data_and_comments() -> None:
    block = b'data: {"x": 1}\r\n\r\n: keep-alive\n\ndata:[DONE]\n\n'
    assert list(iter_events(block)) == [("data", b'{"x": 1}'), ("comment", b": keep-alive"), ("data", b"[DONE]")]


def _completion_chunk(text: str, finish: str | None = None) -> bytes:
    return sse_data(
        {"id": "cmpl-1", "created": 1, "model": "m", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    )


@given(
    st.lists(st.sampled_from(["a", "b", " ", "\n", "<", "E", "N", "D", ">", END_MARKER]), max_size=30).map("".join),
    st.data(),
)
def test_streamed_answer_equals_the_non_streamed_one(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    translator = CompletionStreamTranslator("m", include_usage=False)
    out = b"".join(translator.translate(_completion_chunk(p)) for p in pieces)
    out += translator.translate(_completion_chunk("", "stop"))
    contents = []
    for kind, payload in iter_events(out):
        assert kind == "data"
        chunk = orjson.loads(payload)
        assert chunk["object"] == "chat.completion.chunk"
        contents.append(chunk["choices"][0]["delta"].get("content", ""))
    assert "".join(contents) == strip_completion_answer(text)


def test_upstream_error_shapes() -> None:
    vllm = upstream_error(400, b'{"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}')
    assert vllm.error_dict() == {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}
    fastapi = upstream_error(422, b'{"detail": [{"loc": ["body"], "msg": "field required"}]}')
    assert "field required" in fastapi.error_dict()["message"]
    empty = upstream_error(503, b"")
    assert empty.status_code == 503 and empty.error_dict()["message"] == "backend returned HTTP 503"


def test_key_checker() -> None:
    checker = KeyChecker(["k1", "k2"])
    checker.check(b"Bearer k2")
    checker.check(b"bearer k1")
    for header in (None, b"", b"Bearer", b"Bearer k3", b"Basic k1", b"k1"):
        with pytest.raises(Unauthorized):
            checker.check(header)
    KeyChecker([]).check(None)
