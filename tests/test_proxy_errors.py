"""Every failure comes back in OpenAI's error shape with a fitting status."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from drpo.embedded import free_port
from prompts.config import BackendConfig, FileConfig
from prompts.store import PromptStore
from proxy.errors import upstream_error
from tests.fakes.fake_backend import FakeBackend, JsonReply, RawReply, chat_completion, error
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
    settings = make_settings(tmp_path, backend.url, max_body_bytes=4096)
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
        assert re.search(
            r'drpo_backend_errors_total\{kind="connect",model="fake-model",prompt_version="\w+"\} 1\.0', metrics
        )


def test_slow_backend_is_504(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    # Its own proxy with a short read timeout; the shared one keeps the default, so startup
    # discovery and ordinary calls are not held to it on a slow machine.
    backend.reset()
    backend.enqueue(JsonReply(chat_completion(), delay=30.0))  # it gives up when the proxy hangs up
    with running_proxy(make_settings(tmp_path, backend.url, read_timeout=2.0), None, store) as url:
        assert_openai_error(post(url, json=BODY), 504, "backend_timeout")


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_upstream_errors_pass_through_in_openai_shape(proxy: str, backend: FakeBackend, status: int) -> None:
    backend.enqueue(error(status, "scripted failure", retry_after="7" if status in (429, 503) else None))
    response = post(proxy, json=BODY)
    fields = assert_openai_error(response, status)
    assert fields["message"] == "scripted failure"
    if status in (429, 503):
        assert response.headers["retry-after"] == "7"


def test_non_json_upstream_error_is_reshaped(proxy: str, backend: FakeBackend) -> None:
    # Raw bytes, not a JSON string: the reshaping must go through its JSON-decode failure.
    backend.enqueue(RawReply(b"plain text failure", status=500))
    fields = assert_openai_error(post(proxy, json=BODY), 500)
    assert fields["message"] == "plain text failure"
    assert fields["type"] == "upstream_error" and fields["code"] == 500


def test_upstream_error_reads_non_json_bytes() -> None:
    fields = upstream_error(503, b"<html>Service Unavailable</html>").error_dict()
    assert fields["message"] == "<html>Service Unavailable</html>"
    deep = upstream_error(422, b'{"detail": ' + b"[" * 300 + b"]" * 300 + b"}").error_dict()
    assert isinstance(deep["message"], str)


# -- hostile request bodies (issue 6) ------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [254, 300, 1022])
@pytest.mark.parametrize("headers", [{}, {"x-drpo-bypass": "1"}])
def test_deeply_nested_bodies_are_400_not_500(
    proxy: str, backend: FakeBackend, depth: int, headers: dict[str, str]
) -> None:
    # orjson reads up to 1024 levels but writes only 254: the proxy re-encodes what it injects into.
    body = (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + _nested(depth) + b"}"
    )
    response = httpx.post(
        f"{proxy}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )
    if headers:  # a bypass body goes out as it came: the backend gets it, the proxy never fails
        assert response.status_code == 200
        return
    fields = assert_openai_error(response, 400)
    assert fields["type"] == "invalid_request_error" and "nested" in fields["message"]
    assert backend.posts() == []


def test_nesting_past_what_orjson_reads_is_400(proxy: str) -> None:
    assert_openai_error(post(proxy, b'{"model": "fake-model", "x": ' + _nested(1100) + b"}"), 400)


def test_openai_client_sees_bad_request_for_a_deep_body(proxy: str) -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    with (
        openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.BadRequestError),
    ):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"metadata": deep}
        )


# -- broken backend answers (issue 6) -----------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        RawReply(b"<html>oops</html>", content_type="text/html"),
        RawReply(b'{"id": "chatcmpl-1", "choices": [', content_type="application/json"),
        RawReply(b"", content_type="application/json"),
        JsonReply([1, 2, 3]),
        JsonReply("just a string"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_a_non_json_success_is_502(proxy: str, backend: FakeBackend, reply: RawReply | JsonReply, path: str) -> None:
    backend.enqueue(reply)
    body = {**BODY, "prompt": "p", "input": "i"}
    fields = assert_openai_error(post(proxy, json=body, path=path), 502, "bad_backend_response")
    assert fields["type"] == "upstream_error"


def test_openai_client_sees_a_server_error_for_a_non_json_success(proxy: str, backend: FakeBackend) -> None:
    backend.enqueue(RawReply(b"<html>oops</html>", content_type="text/html"))
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    with client, pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502


# -- x-request-id (issue 6) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "client_id",
    [b"r" * 129, b"x" * 8192, b"caf\xc3\xa9", b"tab\there", b"sp ace", b"\xff\xfe"],
)
def test_an_unusable_request_id_is_replaced_never_echoed(proxy: str, backend: FakeBackend, client_id: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", client_id)]
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, headers=headers, timeout=10)
    assert response.status_code == 200
    echoed = response.headers.raw
    ours = [v for k, v in echoed if k.lower() == b"x-request-id"]
    assert len(ours) == 1 and ours[0] != client_id
    assert uuid.UUID(ours[0].decode())  # one of ours
    assert backend.last.headers["x-request-id"] == ours[0].decode()


def test_an_unusable_request_id_is_replaced_on_errors_too(proxy: str) -> None:
    headers = {"x-request-id": "r" * 200}
    response = httpx.post(f"{proxy}/v1/chat/completions", content=b"{bad", headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.headers["x-request-id"] != "r" * 200


def test_a_request_id_of_128_visible_characters_is_kept(proxy: str, backend: FakeBackend) -> None:
    client_id = "id-" + "Z" * 125
    response = httpx.post(f"{proxy}/v1/chat/completions", json=BODY, headers={"x-request-id": client_id}, timeout=10)
    assert response.headers["x-request-id"] == client_id


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


def test_openai_client_gets_our_id_for_an_over_long_one(proxy: str, backend: FakeBackend) -> None:
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "r" * 129}
        )
    assert raw.headers["x-request-id"] != "r" * 129
    assert uuid.UUID(raw.headers["x-request-id"])
    assert raw.parse().choices[0].message.content == "ok"
