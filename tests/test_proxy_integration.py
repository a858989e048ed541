"""The proxy in front of the real embedded llama.cpp backend, driven by the official client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from drpo.embedded import EmbeddedBackend
from prompts.config import EMBEDDED_MODEL_ID
from prompts.defaults import default_artifact
from prompts.store import PromptStore
from tests.fakes.proxy_harness import make_settings, running_proxy

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def proxy(embedded_backend: EmbeddedBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("proxy-home")
    settings = make_settings(home, embedded_backend.base_url, read_timeout=120)
    # An empty store: every model gets the default artifact.
    with PromptStore(home / "store") as store, running_proxy(settings, None, store) as url:
        yield url


@pytest.fixture
def client(proxy: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0, timeout=120) as opened:
        yield opened


def test_non_stream_answers_with_the_default_artifact(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=EMBEDDED_MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-drpo-prompt-version"] == default_artifact().version
    assert float(raw.headers["x-drpo-overhead-ms"]) >= 0
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    # Our system prompt and examples went in front: the prompt is far longer than the question.
    assert completion.usage is not None and completion.usage.prompt_tokens > 100


def test_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=EMBEDDED_MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    )
    assert raw.headers["x-drpo-prompt-version"] == default_artifact().version
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()


def test_bypass_returns_the_raw_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=EMBEDDED_MODEL_ID,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        extra_headers={"x-drpo-bypass": "1"},
    )
    completion = raw.parse()
    assert raw.headers["x-drpo-prompt-version"] == "none"
    assert completion.choices[0].message.content
    # Nothing injected: the prompt is just the chat template around one short question.
    assert completion.usage is not None and completion.usage.prompt_tokens < 60


def test_unknown_model_is_404_although_llama_cpp_ignores_names(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="not-" + EMBEDDED_MODEL_ID, messages=MESSAGES, max_tokens=4)
