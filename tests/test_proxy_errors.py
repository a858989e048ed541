"""Every failure comes back in OpenAI's error shape with a fitting status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from drpo.embedded import free_port
from prompts.config import BackendConfig, FileConfig
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend, JsonReply, chat_completion, error
from tests.fakes.proxy_harness import make_settings, running_proxy

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PromptStore]:
    with PromptStore(tmp_path / "store") as opened:
        yield opened


@pytest.fixture
def proxy(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> Iterator[str]:
    backend.reset()
    settings = make_settings(tmp_path, backend.url, read_timeout=0.5, max_body_bytes=4096)
    with running_proxy(settings, None, store) as url:
        yield url


def assert_openai_error(response: httpx.Response, status: int, code: Any = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error_body = response.json()["error"]
    assert set(error_body) == {"message", "type", "param", "code"}
    assert isinstance(error_body["message"], str) and error_body["message"]
    if code is not None:
        assert error_body["code"] == code
    return dict(error_body)


def post(
    url: str, content: bytes | None = None, json: Any = None, path: str = "/v1/chat/completions"
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(url + path, content=content, json=json, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "fake-model"}', "messages"),
        (b'{"model": "fake-model", "messages": "hello"}', "messages"),
        (b'{"model": "fake-model", "messages": []}', "messages"),
        (b'{"model": "fake-model", "messages": [{"content": "no role"}]}', "messages[0]"),
        (b'{"model": "fake-model", "messages": ["text"]}', "messages[0]"),
    ],
)
def test_bad_requests_are_400_not_422(proxy: str, backend: FakeBackend, body: bytes, param: str | None) -> None:
    fields = assert_openai_error(post(proxy, body), 400)
    assert fields["type"] == "invalid_request_error"
    assert fields["param"] == param
    assert backend.posts() == []


def test_unknown_model_is_404_from_discovery(proxy: str, backend: FakeBackend) -> None:
    response = post(proxy, json={**BODY, "model": "no-such-model"})
    fields = assert_openai_error(response, 404, "model_not_found")
    assert fields["param"] == "model"
    assert backend.posts() == []


def test_body_over_the_limit_is_413(proxy: str) -> None:
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(post(proxy, json=big), 413)


def test_body_over_the_limit_without_content_length_is_413(proxy: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{proxy}/v1/chat/completions", content=chunks(), timeout=10)
    assert_openai_error(response, 413)


def test_backend_down_is_502(store: PromptStore, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = make_settings(tmp_path, dead)
    # Statically listed models skip discovery, so the forward call itself meets the refused port.
    file_config = FileConfig(backends={"dead": BackendConfig(url=dead, models=[MODEL])}, default_backend="dead")
    with running_proxy(config, file_config, store) as url:
        assert_openai_error(post(url, json=BODY), 502, "backend_unavailable")
        # And discovery against a dead backend cannot claim "no such model": 502 too.
        assert_openai_error(post(url, json={**BODY, "model": "unlisted"}), 502)
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'drpo_backend_errors_total{kind="connect",model="fake-model"} 1.0' in metrics


def test_slow_backend_is_504(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(JsonReply(chat_completion(), delay=2.0))
    assert_openai_error(post(proxy, json=BODY), 504, "backend_timeout")


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_upstream_errors_pass_through_in_openai_shape(proxy: str, backend: FakeBackend, status: int) -> None:
    backend.enqueue(error(status, "scripted failure", retry_after="7" if status in (429, 503) else None))
    response = post(proxy, json=BODY)
    fields = assert_openai_error(response, status)
    assert fields["message"] == "scripted failure"
    if status in (429, 503):
        assert response.headers["retry-after"] == "7"


def test_non_json_upstream_error_is_reshaped(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(JsonReply("plain text failure", status=500))
    fields = assert_openai_error(post(proxy, json=BODY), 500)
    assert "plain text failure" in fields["message"]


def test_unknown_route_and_wrong_method(proxy: str) -> None:
    assert_openai_error(httpx.get(f"{proxy}/v1/nothing", timeout=5), 404)
    assert_openai_error(httpx.get(f"{proxy}/v1/chat/completions", timeout=5), 405)


def test_openai_client_sees_typed_errors(proxy: str, backend: FakeBackend) -> None:
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    backend.enqueue(error(429, "slow down", retry_after="3"))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    client.close()
