"""The service around the hot path: hot swap, routing by discovery, /v1/models, readiness, metrics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from prompts.config import BackendConfig, FileConfig, ModelOptions
from prompts.store import PromptStore
from proxy.app import create_app
from tests.fakes.fake_backend import FakeBackend, wait_for
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "bake bread"}]}


@pytest.fixture(scope="module")
def first() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL, "shared-model"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def second() -> Iterator[FakeBackend]:
    with FakeBackend(models=["second-model", "shared-model"]) as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PromptStore]:
    with PromptStore(tmp_path / "store") as opened:
        yield opened


def chat(url: str, body: Mapping[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_hot_swap_without_restart(first: FakeBackend, tmp_path: Path) -> None:
    first.reset()
    # A store opened separately, as `drpo prompts activate` would from another process.
    with PromptStore(tmp_path / "store") as writer:
        v1 = writer.put(make_artifact(MODEL, system_prompt="PROMPT-ONE"), activate=True).version
    with running_proxy(make_settings(tmp_path, first.url)) as url:
        response = chat(url, BODY)
        assert response.headers["x-drpo-prompt-version"] == v1
        assert first.last.json["messages"][0]["content"] == "PROMPT-ONE"
        with PromptStore(tmp_path / "store") as writer:
            v2 = writer.put(make_artifact(MODEL, system_prompt="PROMPT-TWO"), activate=True).version
            assert v2 != v1
            assert wait_for(lambda: chat(url, BODY).headers["x-drpo-prompt-version"] == v2, timeout=10)
            assert first.last.json["messages"][0]["content"] == "PROMPT-TWO"
            assert writer.rollback(MODEL) == v1
        assert wait_for(lambda: chat(url, BODY).headers["x-drpo-prompt-version"] == v1, timeout=10)


def test_routing_by_discovery_and_explicit_backend(
    first: FakeBackend, second: FakeBackend, store: PromptStore, tmp_path: Path
) -> None:
    first.reset()
    second.reset()
    config = FileConfig(
        backends={"second": BackendConfig(url=second.url)},
        models={"pinned-model": ModelOptions(backend="second")},
    )
    # ready_cache_ttl=0: /ready checks the backends on every call, so the failure below shows at once.
    with running_proxy(make_settings(tmp_path, first.url, ready_cache_ttl=0), config, store) as url:
        for model, expected in [
            (MODEL, first),
            ("second-model", second),
            ("shared-model", first),  # the default backend wins when several list a model
            ("pinned-model", second),  # explicit routing needs no discovery
        ]:
            before = len(expected.posts())
            assert chat(url, {**BODY, "model": model}).status_code == 200
            assert len(expected.posts()) == before + 1
            assert expected.last.json["model"] == model
        assert chat(url, {**BODY, "model": "nowhere-model"}).status_code == 404

        listed = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert listed["object"] == "list"
        assert sorted(m["id"] for m in listed["data"]) == [MODEL, "second-model", "shared-model"]

        assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 200
        second.models_status = 500
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["backends"]["second"] != "ok"
        second.models_status = 200


def test_completions_and_embeddings_pass_through(first: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    first.reset()
    store.put(make_artifact(MODEL), activate=True)
    with running_proxy(make_settings(tmp_path, first.url), None, store) as url:
        body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 3, "vendor": [1]}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
        assert response.status_code == 200
        assert response.json()["object"] == "text_completion"
        assert response.headers["x-drpo-prompt-version"] == "none"
        assert first.last.path == "/v1/completions" and first.last.json == body

        body = {"model": MODEL, "input": ["a", "b"], "encoding_format": "float"}
        response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=10)
        assert response.status_code == 200
        assert first.last.path == "/v1/embeddings" and first.last.json == body
        assert (
            httpx.post(f"{url}/v1/embeddings", json={"model": "unknown", "input": "x"}, timeout=10).status_code == 404
        )


def test_metrics_series_and_labels(first: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    first.reset()
    version = store.put(make_artifact(MODEL), activate=True).version
    with running_proxy(make_settings(tmp_path, first.url), None, store) as url:
        assert chat(url, BODY).status_code == 200
        assert chat(url, {**BODY, "model": "nowhere-model"}).status_code == 404
        response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert f'drpo_requests_total{{model="{MODEL}",prompt_version="{version}",status="200"}} 1.0' in text
    assert 'drpo_requests_total{model="unknown",prompt_version="none",status="404"} 1.0' in text
    assert f'drpo_request_duration_seconds_count{{model="{MODEL}",prompt_version="{version}"}} 1.0' in text
    assert "drpo_proxy_overhead_seconds_count 2.0" in text
    assert "drpo_injected_prompt_chars_count 1.0" in text
    for name in ("drpo_time_to_first_token_seconds", "drpo_backend_errors_total"):
        assert f"# TYPE {name} " in text


def test_two_apps_in_one_process_keep_separate_metrics(first: FakeBackend, store: PromptStore, tmp_path: Path) -> None:
    first.reset()
    settings = make_settings(tmp_path, first.url)
    with running_proxy(settings, None, store) as one, running_proxy(settings, None, store) as two:
        assert chat(one, BODY).status_code == 200
        response = httpx.get(f"{two}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert "# TYPE drpo_requests_total counter" in response.text
    assert "drpo_requests_total{" not in response.text


def test_bad_config_is_refused_at_creation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not configured"):
        create_app(make_settings(tmp_path, None), FileConfig(models={"m": ModelOptions(backend="missing")}))
