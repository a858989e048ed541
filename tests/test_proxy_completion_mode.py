"""Completion-mode models: a raw prompt to /v1/completions, answers translated back to chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from prompts.config import FileConfig, ModelOptions
from prompts.layout import END_MARKER, START_MARKER
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend, JsonReply, completion, completion_chunks, stream
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
