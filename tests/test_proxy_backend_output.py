"""Whatever a backend streams or answers, the proxy's readers fail only as BadBackendResponse.

Arbitrary JSON values (and chunk-shaped objects with arbitrary field values) are thrown at
the completion → chat translator, the llama.cpp usage filler and the non-stream
translation; each either produces well-formed OpenAI output or raises
:class:`~proxy.errors.BadBackendResponse`, which the relay turns into an error event.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadBackendResponse, error_body, stream_error_fields, upstream_error
from proxy.llamacpp import UsageFiller
from proxy.streaming import (
    DONE,
    CompletionStreamTranslator,
    MalformedEvent,
    completion_to_chat,
    ends_with_error_event,
    has_done,
    iter_events,
    raw_events,
    sse_data,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    # Texts include the end marker's pieces, so the answer trimming is exercised too.
    | st.text(max_size=8)
    | st.sampled_from(["<END>", " ", "\n", "stop"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


def _field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON value at all."""
    return st.one_of(good, json_values)


choice_objects = st.fixed_dictionaries(
    {},
    optional={
        "index": _field(st.integers(0, 3)),
        "text": _field(st.text(max_size=8)),
        "delta": _field(st.fixed_dictionaries({}, optional={"content": st.text(max_size=5), "role": st.just("x")})),
        "finish_reason": _field(st.sampled_from(["stop", "length", None])),
    },
)
chunk_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": _field(st.just("cmpl-1")),
        "created": _field(st.integers(1, 2**40)),
        "model": _field(st.just("m")),
        "choices": _field(st.lists(_field(choice_objects), max_size=3)),
        "usage": _field(st.fixed_dictionaries({"completion_tokens": st.integers(0, 9)})),
        "error": json_values,
    },
)
events = st.lists(st.one_of(chunk_objects, json_values), max_size=5)


def _assert_well_formed_chat_stream(out: bytes) -> None:
    for kind, payload in iter_events(out):
        assert kind == "data"
        if payload == b"[DONE]":
            continue
        data = orjson.loads(payload)
        if "error" in data:
            assert set(data["error"]) == {"message", "type", "param", "code"}
            continue
        assert data["object"] == "chat.completion.chunk"
        assert isinstance(data["choices"], list)
        for choice in data["choices"]:
            assert isinstance(choice["index"], int) and isinstance(choice["delta"], dict)
            assert isinstance(choice["delta"].get("content", ""), str)


@given(events, st.booleans())
def test_the_translator_emits_chat_chunks_or_raises_bad_backend_response(
    payloads: list[Any], include_usage: bool
) -> None:
    translator = CompletionStreamTranslator("m", include_usage)
    out = b""
    try:
        for payload in payloads:
            out += translator.translate(sse_data(payload))
        out += translator.translate(DONE)
    except BadBackendResponse as exc:
        assert exc.status_code == 502 and set(exc.error_dict()) == {"message", "type", "param", "code"}
    _assert_well_formed_chat_stream(out)


@given(events, st.booleans())
def test_the_usage_filler_counts_or_raises_bad_backend_response(payloads: list[Any], chat: bool) -> None:
    filler = UsageFiller({"messages": [{"role": "user", "content": "hi"}]}, "m", chat=chat)
    try:
        for payload in payloads:
            filler.observe(sse_data(payload))
    except BadBackendResponse:
        return
    block = filler.insert(DONE)
    assert block.endswith(DONE)
    for _, payload in iter_events(block):
        if payload != b"[DONE]":
            usage = orjson.loads(payload)["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@given(st.one_of(chunk_objects, json_values))
def test_non_stream_translation_gives_a_chat_completion_or_raises(payload: Any) -> None:
    if not isinstance(payload, dict):
        return  # the relay refuses non-objects before translating (tested end to end)
    try:
        chat = completion_to_chat(payload, "m")
    except BadBackendResponse:
        return
    orjson.dumps(chat)
    assert chat["object"] == "chat.completion"
    assert all(isinstance(c["message"]["content"], str) for c in chat["choices"])


@given(json_values)
def test_stream_error_fields_are_always_openai_shaped(value: Any) -> None:
    fields = stream_error_fields(value)
    assert set(fields) == {"message", "type", "param", "code"}
    assert isinstance(fields["message"], str) and fields["message"]
    orjson.dumps(fields)


def _nested(depth: int) -> bytes:
    """JSON nested ``depth`` levels: orjson reads up to 1024, but writes only up to 254."""
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize(
    "event",
    [
        b'{"choices": 5}',
        b'{"choices": "abc"}',
        b'{"choices": {"0": {"text": "a"}}}',
        b'{"choices": [1, 2]}',
        b'{"choices": [{"index": "zero", "text": "a"}]}',
        b'{"choices": [{"text": ["a"]}]}',
        b'{"choices": [], "usage": [1]}',
        b"[1, 2, 3]",
        b"not json",
        b'{"choices": [], "usage": {"deep": ' + _nested(300) + b"}}",
    ],
)
def test_malformed_completion_events_raise_bad_backend_response(event: bytes) -> None:
    translator = CompletionStreamTranslator("m", include_usage=True)
    with pytest.raises(BadBackendResponse):
        translator.translate(b"data: " + event + b"\n\n")


@pytest.mark.parametrize(
    "event",
    [b'{"choices": 5}', b'{"choices": [7]}', b'{"choices": [{"delta": "x"}]}', b'{"usage": "lots"}', b"nope"],
)
def test_malformed_chat_events_stop_the_usage_filler(event: bytes) -> None:
    filler = UsageFiller({"messages": []}, "m", chat=True)
    with pytest.raises(BadBackendResponse):
        filler.observe(b"data: " + event + b"\n\n")


def test_a_backend_error_event_is_reshaped_not_passed_raw() -> None:
    translator = CompletionStreamTranslator("m", include_usage=False)
    out = translator.translate(b'data: {"error": "model crashed"}\n\n')
    assert orjson.loads(out[6:]) == {
        "error": {"message": "model crashed", "type": "upstream_error", "param": None, "code": None}
    }


def test_done_is_found_only_as_its_own_line() -> None:
    assert has_done(b"data: [DONE]\n\n") and has_done(b'data: {"a": 1}\r\rdata:[DONE]\r\r')
    assert has_done(b"data: [DONE]")  # an unterminated last line (checked at the stream's end)
    assert not has_done(b'data: {"content": "data: [DONE]"}\n\n')
    assert not has_done(b"data: [DONE]x\n\n")


def test_ends_with_error_event() -> None:
    assert ends_with_error_event(b'data: {"x": 1}\n\ndata: {"error": {"message": "m"}}\n\n: ping\n\n')
    assert not ends_with_error_event(b'data: {"error": {}}\n\ndata: {"x": 1}\n\n')
    assert not ends_with_error_event(b"")


@given(json_values, st.integers(400, 599), st.sampled_from(["error", "detail", None]))
def test_any_backend_error_body_gives_an_encodable_openai_error(value: Any, status: int, key: str | None) -> None:
    body = orjson.dumps({key: value} if key else value)
    fields = upstream_error(status, body).error_dict()
    assert set(fields) == {"message", "type", "param", "code"} and isinstance(fields["message"], str)
    orjson.dumps(fields)


@pytest.mark.parametrize("field", ["message", "type", "param", "code"])
def test_a_deeply_nested_backend_error_field_still_encodes(field: str) -> None:
    body = b'{"error": {"' + field.encode() + b'": ' + _nested(300) + b"}}"
    assert orjson.loads(error_body(upstream_error(500, body)))["error"]["message"]


def test_events_before_a_malformed_one_in_the_same_block_still_count() -> None:
    good = sse_data({"id": "cmpl-1", "choices": [{"index": 0, "text": "Hi", "finish_reason": None}]})
    block = good + b": ping\r\n\r\n" + b'data: {"choices": 5}\n\n' + good
    translator = CompletionStreamTranslator("m", include_usage=False)
    with pytest.raises(MalformedEvent) as translated:
        translator.translate(block)
    contents = [
        orjson.loads(p)["choices"][0]["delta"].get("content")
        for k, p in iter_events(translated.value.partial)
        if k == "data"
    ]
    assert contents == ["", "Hi"]  # the role chunk, then the first piece; nothing after the bad event
    filler = UsageFiller({"messages": []}, "m", chat=False)
    with pytest.raises(MalformedEvent) as observed:
        filler.observe(block)
    assert observed.value.partial == good + b": ping\r\n\r\n"  # the backend's own bytes, up to the bad event


@given(st.lists(st.sampled_from([b"data: a", b": c", b"data: {}", b"id: 1"]), min_size=1, max_size=5), st.data())
def test_raw_events_cut_a_block_where_its_events_end(lines: list[bytes], data: st.DataObject) -> None:
    ends = st.sampled_from([b"\n", b"\r", b"\r\n"])
    events = []
    for line in lines:
        first, blank = data.draw(ends), data.draw(ends)
        if first == b"\r" and blank == b"\n":
            blank = b"\r\n"
        events.append(line + first + blank)
    block = b"".join(events)
    assert [event for _, event in raw_events(block)] == events
