"""Chat completions through the proxy: injection, policies, pass-through, bypass, headers, auth."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from prompts.config import BackendConfig, FileConfig, ModelOptions
from prompts.defaults import default_artifact
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend, JsonReply, chat_completion
from tests.fakes.proxy_harness import SYSTEM_PROMPT, make_artifact, make_settings, running_proxy

MODEL = "fake-model"


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL, "other-model", "plain-model"]) as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PromptStore]:
    with PromptStore(tmp_path / "store") as opened:
        opened.put(make_artifact(MODEL), activate=True)
        yield opened


@pytest.fixture
def proxy(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> Iterator[str]:
    backend.reset()
    config = FileConfig(
        models={
            "other-model": ModelOptions(system_policy="replace", k=2),
        }
    )
    with running_proxy(make_settings(tmp_path, backend.url), config, store) as url:
        yield url


def chat(url: str, body: Mapping[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_injects_one_system_message_and_the_closest_example(
    proxy: str, backend: FakeBackend, store: PromptStore
) -> None:
    response = chat(proxy, {"model": MODEL, "messages": [{"role": "user", "content": "my linux process is stuck"}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    sent = backend.last.json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == SYSTEM_PROMPT
    assert sent[2]["content"].startswith("EXAMPLE-KILL")
    assert sent[-1] == {"role": "user", "content": "my linux process is stuck"}
    assert response.headers["x-drpo-prompt-version"] == store.active_version(MODEL)


def test_merge_policy_puts_ours_first_then_the_clients(proxy: str, backend: FakeBackend) -> None:
    messages = [
        {"role": "developer", "content": "CLIENT-DEV"},
        {"role": "system", "content": "CLIENT-SYS"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "write a poem about the sea"},
    ]
    assert chat(proxy, {"model": MODEL, "messages": messages}).status_code == 200
    sent = backend.last.json["messages"]
    assert sum(m["role"] in ("system", "developer") for m in sent) == 1
    assert sent[0] == {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nCLIENT-DEV\n\nCLIENT-SYS"}
    # Examples once, at the start, chosen by the latest user turn; the conversation after them.
    assert sent[2]["content"].startswith("EXAMPLE-POEM")
    assert sent[3:] == messages[2:]


def test_replace_policy_and_per_model_k_from_the_config(proxy: str, backend: FakeBackend) -> None:
    messages = [{"role": "system", "content": "CLIENT-SYS"}, {"role": "user", "content": "bake bread"}]
    response = chat(proxy, {"model": "other-model", "messages": messages})
    assert response.status_code == 200
    sent = backend.last.json["messages"]
    # other-model has no artifact of its own: the default artifact, system prompt replaced.
    assert sent[0] == {"role": "system", "content": default_artifact().system_prompt}
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert response.headers["x-drpo-prompt-version"] == default_artifact().version


def test_client_policy_keeps_the_clients_system_message(
    backend: FakeBackend, store: PromptStore, tmp_path: Path
) -> None:
    backend.reset()
    config = FileConfig(models={MODEL: ModelOptions(system_policy="client", k=0)})
    with running_proxy(make_settings(tmp_path, backend.url), config, store) as url:
        messages = [{"role": "system", "content": "CLIENT-SYS"}, {"role": "user", "content": "hi"}]
        assert chat(url, {"model": MODEL, "messages": messages}).status_code == 200
    assert backend.last.json["messages"] == messages


def test_every_other_field_passes_through_untouched(proxy: str, backend: FakeBackend) -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "seed": 42,
        "temperature": 0.3,
        "stream_options": {"include_usage": True},
        "vendor_extension": {"nested": [1, 2, {"x": None}]},
        "top_k": 5,
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    assert chat(proxy, body).status_code == 200
    sent = backend.last.json
    assert {k: sent[k] for k in extra} == extra
    assert set(sent) == {"model", "messages", *extra}


def test_bypass_forwards_the_request_untouched(proxy: str, backend: FakeBackend) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    response = chat(proxy, body, headers={"x-drpo-bypass": "1"})
    assert response.status_code == 200
    assert backend.last.json == body
    assert response.headers["x-drpo-prompt-version"] == "none"


def test_response_headers(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(JsonReply(chat_completion(), headers={"openai-processing-ms": "123"}))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    request_id = "5f0c6d3e-8a53-4a7e-9f0e-3f1f8e0f2a11"
    response = chat(proxy, body, headers={"x-request-id": request_id})
    assert response.headers["x-request-id"] == request_id
    assert backend.last.headers["x-request-id"] == request_id
    assert response.headers["openai-processing-ms"] == "123"
    assert float(response.headers["x-drpo-overhead-ms"]) >= 0
    generated = chat(proxy, body).headers["x-request-id"]
    assert generated and generated != request_id
    assert backend.last.headers["x-request-id"] == generated
    # A free-form id comes back to the client but is not sent on (llama.cpp rejects non-UUIDs).
    response = chat(proxy, body, headers={"x-request-id": "req-abc"})
    assert response.headers["x-request-id"] == "req-abc"
    assert "x-request-id" not in backend.last.headers


def test_openai_sync_client(proxy: str, backend: FakeBackend) -> None:
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"vendor": "x"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "ok"
    assert raw.headers["x-drpo-prompt-version"] != "none"
    assert backend.last.json["vendor"] == "x"
    client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_openai_async_client(proxy: str, backend: FakeBackend) -> None:
    async with openai.AsyncOpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "ok"
    assert backend.last.json["messages"][0]["content"] == SYSTEM_PROMPT


def test_api_keys_are_required_when_configured(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    settings = make_settings(tmp_path, backend.url, api_keys="key-one, key-two", backend_api_key="backend-secret")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with running_proxy(settings, None, store) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "key-one"}):
            response = chat(url, body, headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
        assert backend.posts() == []
        assert chat(url, body, {"authorization": "Bearer key-two"}).status_code == 200
        # The backend gets its own key, never the client's.
        assert backend.last.headers["authorization"] == "Bearer backend-secret"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="key-one", max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]).choices
        client.close()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_client_authorization_is_forwarded_only_when_configured(
    backend: FakeBackend, store: PromptStore, tmp_path: Path
) -> None:
    backend.reset()
    config = FileConfig(
        backends={
            "keyed": BackendConfig(url=backend.url, api_key="file-key", models=["plain-model"]),
            "forwarding": BackendConfig(url=backend.url, forward_client_auth=True, models=[MODEL]),
        }
    )
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with running_proxy(make_settings(tmp_path, None), config, store) as url:
        assert chat(url, {"model": "plain-model", **body}, {"authorization": "Bearer client"}).status_code == 200
        assert backend.last.headers["authorization"] == "Bearer file-key"
        assert chat(url, {"model": MODEL, **body}, {"authorization": "Bearer client"}).status_code == 200
        assert backend.last.headers["authorization"] == "Bearer client"
