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


@given(
    st.lists(st.sampled_from(["data: a\n\n", ": ping\r\n\r\n", "data: b\r\n\r\n", "data: [DONE]\n\n"]), max_size=8),
    st.data(),
)
def test_splitter_forwards_whole_events_whatever_the_chunking(events: list[str], data: st.DataObject) -> None:
    stream = "".join(events).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    splitter = EventSplitter()
    out = b""
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        block = splitter.feed(stream[start:end])
        # Every forwarded block ends on an event boundary.
        assert not block or block.endswith((b"\n\n", b"\r\n\r\n"))
        out += block
    assert out == stream and splitter.pending == b""


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
