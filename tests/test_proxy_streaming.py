"""Streaming: true pass-through of SSE, keep-alives, usage, errors mid-stream, cancellation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from prompts.store import PromptStore
from tests.fakes.fake_backend import (
    FakeBackend,
    JsonReply,
    chat_chunks,
    chat_completion,
    encode_event,
    error,
    stream,
    wait_for,
)
from tests.fakes.proxy_harness import SYSTEM_PROMPT, make_artifact, make_settings, running_proxy

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def proxy(backend: FakeBackend, tmp_path: Path) -> Iterator[str]:
    backend.reset()
    with PromptStore(tmp_path / "store") as store:
        store.put(make_artifact(MODEL), activate=True)
        with running_proxy(make_settings(tmp_path, backend.url), None, store) as url:
            yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def data_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_chunks_reach_the_client_before_the_backend_finishes(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["one", "two", "three"]), delay=0.3))
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=BODY, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-drpo-prompt-version"] != "none"
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # The first event is here while the backend is still sending the rest.
        assert not backend.stream_finished.is_set()
        assert orjson.loads(first[6:])["object"] == "chat.completion.chunk"
        rest = list(lines)
    assert backend.stream_finished.is_set()
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    assert backend.last.json["messages"][0]["content"] == SYSTEM_PROMPT


def test_keep_alive_comments_pass_through(proxy: str, backend: FakeBackend) -> None:
    events = chat_chunks(["a", "b"])
    backend.enqueue(stream([": keep-alive", events[0], ": keep-alive", *events[1:]], delay=0.01))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert response.text.count(": keep-alive\n\n") == 2
    assert data_events(response.text)[-1] == "[DONE]"


def test_include_usage_with_the_openai_client(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["Hel", "lo"], usage=True)))
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert backend.last.json["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_async_openai_client_streams(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["x", "y", "z"]), delay=0.01))
    async with openai.AsyncOpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        events = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in events if chunk.choices]
    assert "".join(pieces) == "xyz"


def test_connection_dropped_mid_stream_becomes_an_error_event(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a", "b", "c"]), drop_after=2))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    events = data_events(response.text)
    assert len(events) == 3
    error_event = orjson.loads(events[-1])
    assert set(error_event["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in events
    metrics = httpx.get(f"{proxy}/metrics", timeout=5).text
    assert re.search(
        r'drpo_backend_errors_total\{kind="disconnect",model="fake-model",prompt_version="\w+"\} 1\.0', metrics
    )


def test_openai_client_raises_on_the_error_event(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a", "b", "c"]), drop_after=2))
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True):
            pass
    client.close()


def test_client_disconnect_cancels_the_backend_stream(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks([f"piece {i}" for i in range(100)]), delay=0.05))
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=BODY, timeout=10) as response:
        next(line for line in response.iter_lines() if line.startswith("data: "))
    # Leaving the block closed our connection; the proxy must close its upstream one.
    assert wait_for(backend.cancelled.is_set, timeout=5)
    assert not backend.stream_finished.is_set()


def test_error_before_the_stream_starts_is_a_json_error(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(error(429, "busy", retry_after="2"))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["message"] == "busy"


def test_time_to_first_token_is_recorded(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a"])))
    httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    metrics = httpx.get(f"{proxy}/metrics", timeout=5).text
    assert re.search(r'drpo_time_to_first_token_seconds_count\{model="fake-model",prompt_version="\w+"\} 1\.0', metrics)


def test_backend_failing_before_its_first_event_gets_a_proper_status(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a"]), drop_after=0))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "backend_unavailable"


def test_client_disconnect_cancels_a_slow_non_stream_request(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(JsonReply(chat_completion(), delay=5.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy}/v1/chat/completions", json={**BODY, "stream": False}, timeout=0.5)
    assert wait_for(backend.cancelled.is_set, timeout=5)


# -- broken backend streams: every one ends with an OpenAI-shaped error (issue 6) ---------


def _chunk_bytes(content: str) -> bytes:
    return encode_event(chat_chunks([content])[1])


def _last_error(text: str) -> dict[str, object]:
    events = data_events(text)
    assert events and "[DONE]" not in events
    fields = orjson.loads(events[-1])["error"]
    assert set(fields) == {"message", "type", "param", "code"}
    return dict(fields)


def test_a_stream_without_done_ends_with_an_error_event(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a", "b"])[:-1]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert response.status_code == 200
    assert _last_error(response.text)["code"] == "bad_backend_response"
    assert len(data_events(response.text)) == 5  # role, a, b, stop, error
    metrics = httpx.get(f"{proxy}/metrics", timeout=5).text
    assert re.search(
        r'drpo_backend_errors_total\{kind="bad_response",model="fake-model",prompt_version="\w+"\} 1\.0', metrics
    )


def test_the_openai_client_raises_api_error_not_connection_error(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a", "b"])[:-1]))
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        pieces = []
        with pytest.raises(openai.APIError) as raised:
            for chunk in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
            ):
                pieces.append(chunk.choices[0].delta.content or "")
    assert not isinstance(raised.value, openai.APIConnectionError)
    assert "".join(pieces) == "ab"


def test_an_unterminated_last_event_is_not_forwarded(proxy: str, backend: FakeBackend) -> None:
    cut = _chunk_bytes("never")[:-2]  # the event without its blank line
    backend.enqueue(stream([*chat_chunks(["a"])[:2], cut]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert "never" not in response.text
    assert "middle of an event" in str(_last_error(response.text)["message"])


def test_an_unterminated_done_still_ends_the_stream(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream([*chat_chunks(["a"])[:-1], b"data: [DONE]"]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert data_events(response.text)[-1] == "[DONE]"
    assert "error" not in response.text


def test_the_backends_own_error_event_is_not_doubled(proxy: str, backend: FakeBackend) -> None:
    failure = {"error": {"message": "out of memory", "type": "server_error", "param": None, "code": None}}
    backend.enqueue(stream([*chat_chunks(["a"])[:2], failure]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert _last_error(response.text)["message"] == "out of memory"
    assert response.text.count('"error"') == 1


@pytest.mark.parametrize("garbage", [b"<html>502 Bad Gateway</html>", b"", b'data: {"choices": [{"delta"'])
def test_a_stream_with_no_complete_event_is_502(proxy: str, backend: FakeBackend, garbage: bytes) -> None:
    backend.enqueue(stream([garbage] if garbage else []))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_response"


def test_bypass_streams_are_checked_too(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(chat_chunks(["a"])[:-1]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, headers={"x-drpo-bypass": "1"}, timeout=10)
    assert _last_error(response.text)["code"] == "bad_backend_response"


@pytest.mark.parametrize("ending", [b"\r\r", b"\n\r\n", b"\r\n\n", b"\n\r", b"\r\r\n", b"\r\n\r"])
def test_events_with_any_line_ending_are_forwarded_as_they_complete(
    proxy: str, backend: FakeBackend, ending: bytes
) -> None:
    # The line's end and the blank line's, in every mix the SSE spec allows.
    events = [encode_event(e)[:-2] + ending if isinstance(e, dict) else e for e in chat_chunks(["x", "y"])]
    backend.enqueue(stream(events, delay=0.3))
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=BODY, timeout=10) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        # The first event arrived on its own, long before the backend's last one.
        assert b"chat.completion.chunk" in first
        assert not backend.stream_finished.is_set()
        rest = b"".join(chunks)
    assert b"[DONE]" in rest and b"error" not in rest


def test_the_openai_client_reads_a_stream_with_mixed_line_endings(proxy: str, backend: FakeBackend) -> None:
    events = [encode_event(e)[:-2] + b"\n\r" if isinstance(e, dict) else e for e in chat_chunks(["Hel", "lo"])]
    backend.enqueue(stream(events))
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
