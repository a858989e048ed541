"""Completion-mode models: a raw prompt to /v1/completions, answers translated back to chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from prompts.config import FileConfig, ModelOptions
from prompts.layout import END_MARKER, START_MARKER
from prompts.store import PromptStore
from tests.fakes.fake_backend import (
    FakeBackend,
    JsonReply,
    RawReply,
    completion,
    completion_chunks,
    encode_event,
    stream,
)
from tests.fakes.proxy_harness import SYSTEM_PROMPT, make_artifact, make_settings, running_proxy

BASE = "base-model"  # completion mode from the config file
LAYOUT = "layout-model"  # completion mode from its artifact's layout


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[BASE, LAYOUT]) as fake:
        yield fake


@pytest.fixture
def proxy(backend: FakeBackend, tmp_path: Path) -> Iterator[str]:
    backend.reset()
    config = FileConfig(models={BASE: ModelOptions(mode="completion", k=1)})
    with PromptStore(tmp_path / "store") as store:
        store.put(make_artifact(BASE), activate=True)
        store.put(make_artifact(LAYOUT, layout="completion"), activate=True)
        with running_proxy(make_settings(tmp_path, backend.url), config, store) as url:
            yield url


def test_non_stream_translation(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(JsonReply(completion(f"\n  The answer.  \n{END_MARKER} trailing")))
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": "how do I bake bread?"}],
        "max_completion_tokens": 20,
        "temperature": 0,
        "stop": ["###"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    response = httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "The answer."}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["total_tokens"] == 12
    sent = backend.last
    assert sent.path == "/v1/completions"
    assert sent.json["stop"] == [END_MARKER, "###"]
    assert sent.json["max_tokens"] == 20 and sent.json["temperature"] == 0
    assert "messages" not in sent.json and "tools" not in sent.json
    prompt = sent.json["prompt"]
    assert SYSTEM_PROMPT in prompt and "EXAMPLE-BREAD" in prompt
    assert prompt.rstrip().endswith(START_MARKER)


def test_layout_from_the_artifact_selects_completion_mode(proxy: str, backend: FakeBackend) -> None:
    response = httpx.post(
        f"{proxy}/v1/chat/completions",
        json={"model": LAYOUT, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 200
    assert backend.last.path == "/v1/completions"
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def test_stream_translation_with_the_openai_client(proxy: str, backend: FakeBackend) -> None:
    # The answer arrives in pieces with surrounding whitespace and a marker split across chunks.
    pieces = ["\n", "Hello", " wor", "ld  ", "\n<E", "ND> ignored"]
    backend.enqueue(stream(completion_chunks(pieces, model=BASE, usage=True), delay=0.01))
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.close()
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert backend.last.json["stream"] is True


def test_stream_passes_keep_alives_and_ends_with_done(proxy: str, backend: FakeBackend) -> None:
    events = completion_chunks(["Hi"], model=BASE)
    backend.enqueue(stream([": ping", *events]))
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10)
    assert ": ping\n\n" in response.text
    assert response.text.rstrip().endswith("data: [DONE]")


# -- broken backend output (issue 6) ------------------------------------------------------

STREAM_BODY = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _data(text: str) -> list[Any]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "cmpl-1", "choices": 5},
        {"id": "cmpl-1", "choices": {"text": "x"}},
        {"id": "cmpl-1", "choices": ["x"]},
        {"id": "cmpl-1", "choices": [{"index": "0", "text": "x"}]},
        {"id": "cmpl-1", "choices": [{"text": 42}]},
        {"id": "cmpl-1", "choices": [], "usage": [1, 2]},
        [1, 2],
        b"data: {broken json\n\n",
    ],
)
def test_a_malformed_event_mid_stream_ends_with_an_error_event(proxy: str, backend: FakeBackend, bad: Any) -> None:
    good = completion_chunks(["Hel", "lo"], model=BASE)
    backend.enqueue(stream([good[0], bad, *good[1:]]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=STREAM_BODY, timeout=10)
    assert response.status_code == 200
    events = _data(response.text)
    assert events[-1]["error"]["code"] == "bad_backend_response"
    assert set(events[-1]["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in response.text


def test_a_malformed_first_event_is_502_not_500(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream([{"id": "cmpl-1", "choices": 5}, *completion_chunks(["x"], model=BASE)]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=STREAM_BODY, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_response"


def test_openai_client_gets_an_api_error_from_a_broken_translated_stream(proxy: str, backend: FakeBackend) -> None:
    good = completion_chunks(["Hel", "lo"], model=BASE)
    backend.enqueue(stream([good[0], {"id": "cmpl-1", "choices": "oops"}, *good[1:]]))
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        chunks = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError) as raised:
            list(chunks)
    assert not isinstance(raised.value, openai.APIConnectionError)


def test_a_translated_stream_without_done_ends_with_an_error_event(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(stream(completion_chunks(["Hi"], model=BASE)[:-1]))
    response = httpx.post(f"{proxy}/v1/chat/completions", json=STREAM_BODY, timeout=10)
    assert _data(response.text)[-1]["error"]["code"] == "bad_backend_response"


@pytest.mark.parametrize(
    "reply",
    [
        RawReply(b"<html>oops</html>", content_type="text/html"),
        JsonReply({"id": "cmpl-1", "choices": 5}),
        JsonReply({"id": "cmpl-1", "choices": [{"text": None, "index": "first"}]}),
    ],
)
def test_a_broken_non_stream_completion_is_502(proxy: str, backend: FakeBackend, reply: RawReply | JsonReply) -> None:
    backend.enqueue(reply)
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_response"


def test_good_events_arriving_with_a_malformed_one_still_reach_the_client(proxy: str, backend: FakeBackend) -> None:
    good = completion_chunks(["Hel", "lo"], model=BASE)
    together = encode_event(good[0]) + encode_event({"id": "cmpl-1", "choices": 5}) + encode_event(good[1])
    backend.enqueue(stream([together, *good[2:]]))  # one chunk, as a busy backend's events often come
    response = httpx.post(f"{proxy}/v1/chat/completions", json=STREAM_BODY, timeout=10)
    assert response.status_code == 200
    events = _data(response.text)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hel"
    assert events[-1]["error"]["code"] == "bad_backend_response"
