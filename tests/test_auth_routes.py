"""Who may call what: client keys on every /v1 route, the open routes, the metrics key,
the cached readiness check, and the bypass policy."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend, Reply, chat_chunks, completion_chunks, stream
from tests.fakes.proxy_harness import SYSTEM_PROMPT, make_artifact, make_settings, running_proxy

MODEL = "fake-model"
KEYS = "key-one,key-two"


@dataclass(frozen=True)
class V1Route:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    reply: Reply | None = None  # what the backend streams for a request that gets through

    @property
    def streams(self) -> bool:
        return self.reply is not None


MESSAGES = [{"role": "user", "content": "bake bread"}]
V1_ROUTES = [
    V1Route("chat", "POST", "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
    V1Route(
        "chat-stream",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "stream": True},
        stream(chat_chunks(["o", "k"])),
    ),
    V1Route("completions", "POST", "/v1/completions", {"model": MODEL, "prompt": "Once"}),
    V1Route(
        "completions-stream",
        "POST",
        "/v1/completions",
        {"model": MODEL, "prompt": "Once", "stream": True},
        stream(completion_chunks(["o", "k"])),
    ),
    V1Route("embeddings", "POST", "/v1/embeddings", {"model": MODEL, "input": "bread"}),
    V1Route("models", "GET", "/v1/models"),
]


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PromptStore]:
    with PromptStore(tmp_path / "store") as opened:
        opened.put(make_artifact(MODEL), activate=True)
        yield opened


def call(url: str, route: V1Route, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(route.method, f"{url}{route.path}", json=route.body, headers=headers, timeout=10)


def assert_openai_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["message"]
    return error


# -- client keys on every /v1 route ---------------------------------------------------


@pytest.mark.parametrize("route", V1_ROUTES, ids=lambda r: r.name)
def test_every_v1_route_needs_a_valid_key(
    route: V1Route, backend: FakeBackend, store: PromptStore, tmp_path: Path
) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, api_keys=KEYS), None, store) as url:
        served_before = len(backend.requests)
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": "key-one"},  # no scheme
            {"authorization": "Basic key-one"},
            {"authorization": "Bearer key-one-and-more"},
        ):
            response = call(url, route, headers)
            assert_openai_error(response, 401, "authentication_error")
            assert response.headers["www-authenticate"] == "Bearer"
        assert len(backend.requests) == served_before, "a request without a valid key reached the backend"

        if route.reply is not None:
            backend.enqueue(route.reply)
        response = call(url, route, {"authorization": "Bearer key-two"})
        assert response.status_code == 200, response.text
        if route.streams:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.json()["object"] in {"chat.completion", "text_completion", "list"}


@pytest.mark.parametrize("route", V1_ROUTES, ids=lambda r: r.name)
def test_without_keys_configured_every_v1_route_is_open(
    route: V1Route, backend: FakeBackend, store: PromptStore, tmp_path: Path
) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url), None, store) as url:
        if route.reply is not None:
            backend.enqueue(route.reply)
        assert call(url, route, {}).status_code == 200


def test_health_ready_and_metrics_are_open_by_design(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, api_keys=KEYS), None, store) as url:
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{url}{path}", timeout=5).status_code == 200, path


# -- DRPO_METRICS_KEY -----------------------------------------------------------------


def test_metrics_key_closes_metrics(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    settings = make_settings(tmp_path, backend.url, api_keys=KEYS, metrics_key="scrape-secret")
    with running_proxy(settings, None, store) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer key-one"}):
            response = httpx.get(f"{url}/metrics", headers=headers, timeout=5)
            assert_openai_error(response, 401, "authentication_error")
            assert "drpo_requests_total" not in response.text
        response = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer scrape-secret"}, timeout=5)
        assert response.status_code == 200
        assert "# TYPE drpo_requests_total counter" in response.text
        # The metrics key is not a client key, and /health and /ready stay open.
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"authorization": "Bearer scrape-secret"},
            timeout=10,
        )
        assert chat.status_code == 401
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 200


def test_a_blank_metrics_key_means_open(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    with running_proxy(make_settings(tmp_path, backend.url, metrics_key=" "), None, store) as url:
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200


# -- /ready's cached backend check ------------------------------------------------------


def _model_list_requests(backend: FakeBackend) -> int:
    return sum(1 for r in backend.requests if r.method == "GET" and r.path.endswith("/models"))


def test_a_ready_flood_makes_one_backend_request(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, ready_cache_ttl=60.0), None, store) as url:
        before = _model_list_requests(backend)
        sequential = [httpx.get(f"{url}/ready", timeout=10).status_code for _ in range(10)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            concurrent_codes = list(pool.map(lambda _: httpx.get(f"{url}/ready", timeout=10).status_code, range(16)))
        assert sequential == [200] * 10 and concurrent_codes == [200] * 16
        assert _model_list_requests(backend) - before == 1


def test_ready_checks_again_after_the_ttl(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, ready_cache_ttl=0.2), None, store) as url:
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
        backend.models_status = 500
        time.sleep(0.5)
        response = httpx.get(f"{url}/ready", timeout=10)
        assert response.status_code == 503 and response.json()["status"] == "unavailable"
        backend.models_status = 200


def test_a_zero_ttl_checks_every_time(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, ready_cache_ttl=0), None, store) as url:
        before = _model_list_requests(backend)
        for _ in range(3):
            assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
        assert _model_list_requests(backend) - before == 3


# -- DRPO_BYPASS ----------------------------------------------------------------------

BYPASS = {"x-drpo-bypass": "1"}


def _chat(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def _was_aligned(backend: FakeBackend) -> bool:
    return bool(backend.last.json["messages"][0]["content"] == SYSTEM_PROMPT)


def test_bypass_is_allowed_to_any_client_by_default(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, api_keys=KEYS), None, store) as url:
        response = _chat(url, {"authorization": "Bearer key-one", **BYPASS})
        assert response.status_code == 200 and response.headers["x-drpo-prompt-version"] == "none"
        assert backend.last.json["messages"] == MESSAGES


def test_bypass_off_refuses_with_403(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    with running_proxy(make_settings(tmp_path, backend.url, api_keys=KEYS, bypass="off"), None, store) as url:
        error = assert_openai_error(_chat(url, {"authorization": "Bearer key-one", **BYPASS}), 403, "permission_error")
        assert error["code"] == "bypass_not_allowed" and error["param"] == "x-drpo-bypass"
        assert backend.posts() == []
        # Authentication still comes first, and a request without the header is aligned.
        assert _chat(url, {"authorization": "Bearer wrong", **BYPASS}).status_code == 401
        for headers in ({}, {"x-drpo-bypass": "0"}):
            assert _chat(url, {"authorization": "Bearer key-one", **headers}).status_code == 200
            assert _was_aligned(backend)


def test_bypass_keys_limit_it_to_listed_keys(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    backend.reset()
    settings = make_settings(tmp_path, backend.url, api_keys=KEYS, bypass="keys", bypass_keys="key-two")
    with running_proxy(settings, None, store) as url:
        assert_openai_error(_chat(url, {"authorization": "Bearer key-one", **BYPASS}), 403, "permission_error")
        assert backend.posts() == []
        response = _chat(url, {"authorization": "Bearer key-two", **BYPASS})
        assert response.status_code == 200 and response.headers["x-drpo-prompt-version"] == "none"
        assert backend.last.json["messages"] == MESSAGES
        assert _chat(url, {"authorization": "Bearer key-one"}).status_code == 200
        assert _was_aligned(backend)


def test_bypass_keys_work_without_client_keys(backend: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    """No DRPO_API_KEYS: anyone may use the proxy, but only a bypass key skips alignment."""
    backend.reset()
    settings = make_settings(tmp_path, backend.url, bypass="keys", bypass_keys="raw-access")
    with running_proxy(settings, None, store) as url:
        assert _chat(url, BYPASS).status_code == 403
        assert _chat(url, {"authorization": "Bearer other", **BYPASS}).status_code == 403
        assert _chat(url, {"authorization": "Bearer raw-access", **BYPASS}).status_code == 200
        assert backend.last.json["messages"] == MESSAGES


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bypass": "keys"}, "needs DRPO_BYPASS_KEYS"),
        ({"bypass_keys": "key-one"}, "set DRPO_BYPASS=keys"),
        ({"bypass": "keys", "bypass_keys": "stranger", "api_keys": KEYS}, "must also be one of DRPO_API_KEYS"),
        ({"bypass": "sometimes"}, "any"),
    ],
)
def test_inconsistent_bypass_settings_are_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings(tmp_path, None, **overrides)


def test_bypass_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prompts.config import Settings

    monkeypatch.setenv("DRPO_BYPASS", "keys")
    monkeypatch.setenv("DRPO_BYPASS_KEYS", " raw-a , raw-b ,")
    monkeypatch.setenv("DRPO_METRICS_KEY", "scrape-m")
    monkeypatch.setenv("DRPO_READY_CACHE_TTL", "2.5")
    settings = Settings(home=tmp_path)
    assert settings.bypass == "keys"
    assert [k.get_secret_value() for k in settings.bypass_keys] == ["raw-a", "raw-b"]
    assert settings.metrics_key is not None and settings.metrics_key.get_secret_value() == "scrape-m"
    assert settings.ready_cache_ttl == 2.5
    assert "raw-a" not in repr(settings) and "scrape-m" not in repr(settings)
