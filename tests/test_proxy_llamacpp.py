"""llama.cpp compatibility: backend kind, response_format rewrite, the usage chunk llama.cpp never sends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from drpo.embedded import EmbeddedBackend
from prompts.config import EMBEDDED_MODEL_ID, BackendConfig, FileConfig, ModelOptions
from prompts.store import PromptStore
from proxy.llamacpp import detect_kind, estimate_prompt_tokens, rewrite_response_format
from tests.fakes.fake_backend import FakeBackend, chat_chunks, completion_chunks, stream, wait_for
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy

MODEL = "llama-model"
BASE = "llama-base"  # completion mode
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def llama() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL, BASE], owned_by="me", reject_json_schema=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def plain() -> Iterator[FakeBackend]:
    with FakeBackend(models=[MODEL]) as fake:
        yield fake


def _proxy(tmp_path: Path, backend: FakeBackend, **settings: Any) -> Any:
    backend.reset()
    config = FileConfig(models={BASE: ModelOptions(mode="completion", k=1)})
    store = PromptStore(tmp_path / "store")
    store.put(make_artifact(MODEL), activate=True)
    store.put(make_artifact(BASE), activate=True)
    return store, running_proxy(make_settings(tmp_path, backend.url, **settings), config, store)


@pytest.fixture
def proxy(llama: FakeBackend, tmp_path: Path) -> Iterator[str]:
    store, running = _proxy(tmp_path, llama)
    with store, running as url:
        yield url


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Name a big city."}], **extra}


def _events(text: str) -> list[Any]:
    """The data payloads of an SSE response, JSON-decoded ("[DONE]" kept as a string)."""
    out: list[Any] = []
    for event in text.split("\n\n"):
        if event.startswith("data: "):
            payload = event[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def _usage_events(events: list[Any]) -> list[dict[str, Any]]:
    return [e for e in events if isinstance(e, dict) and e.get("usage") is not None]


# -- units ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "kind"), [("me", "llamacpp"), ("llamacpp", "llamacpp"), ("vllm", "vllm"), ("openai", "openai")]
)
def test_detect_kind_from_owned_by(owner: str, kind: str) -> None:
    assert detect_kind([{"id": "m", "owned_by": owner}]) == kind
    assert detect_kind([]) == "openai"


def test_rewrite_leaves_other_formats_alone() -> None:
    for fmt in ({"type": "json_object"}, {"type": "text"}, "json"):
        body: dict[str, Any] = {"response_format": fmt}
        assert not rewrite_response_format(body)
        assert body == {"response_format": fmt}
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert rewrite_response_format(body)
    assert body == {"response_format": {"type": "json_object"}}


def test_prompt_estimate_grows_with_the_text() -> None:
    short = estimate_prompt_tokens({"messages": [{"role": "user", "content": "Hi"}]})
    longer = estimate_prompt_tokens({"messages": [{"role": "user", "content": "Hi there, how are you today?"}]})
    assert 0 < short < longer
    assert estimate_prompt_tokens({"prompt": "one two three"}) == 4


# -- response_format ------------------------------------------------------------------


def test_json_schema_is_rewritten_for_a_llamacpp_backend(proxy: str, llama: FakeBackend) -> None:
    sent = _body(
        response_format=JSON_SCHEMA_FORMAT,
        temperature=0,
        seed=7,
        max_tokens=40,
        tools=[{"type": "function", "function": {"name": "f"}}],
        vendor_field={"keep": [1, 2]},
    )
    response = httpx.post(f"{proxy}/v1/chat/completions", json=sent, timeout=10)
    assert response.status_code == 200, response.text
    forwarded = llama.last.json
    assert forwarded["response_format"] == {"type": "json_object", "schema": SCHEMA}
    rest = {k: v for k, v in forwarded.items() if k not in ("messages", "response_format")}
    assert rest == {k: v for k, v in sent.items() if k not in ("messages", "response_format")}


def test_bypass_is_rewritten_too_and_nothing_else(proxy: str, llama: FakeBackend) -> None:
    sent = _body(response_format=JSON_SCHEMA_FORMAT, top_p=0.5)
    response = httpx.post(f"{proxy}/v1/chat/completions", json=sent, headers={"x-drpo-bypass": "1"}, timeout=10)
    assert response.status_code == 200, response.text
    assert llama.last.json == {**sent, "response_format": {"type": "json_object", "schema": SCHEMA}}


def test_other_response_formats_pass_untouched(proxy: str, llama: FakeBackend) -> None:
    sent = _body(response_format={"type": "json_object"})
    assert httpx.post(f"{proxy}/v1/chat/completions", json=sent, timeout=10).status_code == 200
    assert llama.last.json["response_format"] == {"type": "json_object"}


def test_no_rewrite_for_an_openai_backend(plain: FakeBackend, tmp_path: Path) -> None:
    store, running = _proxy(tmp_path, plain)
    with store, running as url:
        sent = _body(response_format=JSON_SCHEMA_FORMAT)
        assert httpx.post(f"{url}/v1/chat/completions", json=sent, timeout=10).status_code == 200
    assert plain.last.json["response_format"] == JSON_SCHEMA_FORMAT


def test_configured_kind_overrides_detection(llama: FakeBackend, plain: FakeBackend, tmp_path: Path) -> None:
    sent = _body(response_format=JSON_SCHEMA_FORMAT)
    store, running = _proxy(tmp_path / "a", plain, backend_kind="llamacpp")
    with store, running as url:
        assert httpx.post(f"{url}/v1/chat/completions", json=sent, timeout=10).status_code == 200
    assert plain.last.json["response_format"]["type"] == "json_object"
    # Declared openai: the llama-like backend gets json_schema and fails as the real one does.
    llama.reset()
    config = FileConfig(backends={"l": BackendConfig(url=llama.url, kind="openai")}, default_backend="l")
    with PromptStore(tmp_path / "b") as other, running_proxy(make_settings(tmp_path, None), config, other) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=sent, timeout=10)
    assert response.status_code == 500
    assert "json_object" in response.json()["error"]["message"]


# -- the usage chunk -------------------------------------------------------------------


def test_include_usage_adds_one_usage_chunk_before_done(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(chat_chunks(["Par", "is", "."], model=MODEL)))
    body = _body(stream=True, stream_options={"include_usage": True})
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10).text)
    assert events[-1] == "[DONE]"
    usage = _usage_events(events)
    assert len(usage) == 1 and usage[0] is events[-2]
    chunk = usage[0]
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"] == []
    assert chunk["id"] == "chatcmpl-fake" and chunk["model"] == MODEL
    # The fake's role chunk carries content "" too (as the C++ server's does): not a token.
    counts = chunk["usage"]
    assert counts["completion_tokens"] == 3 and counts["estimated"] is True
    assert counts["prompt_tokens"] > 20  # our injected system prompt and example are counted
    assert counts["total_tokens"] == counts["prompt_tokens"] + 3
    assert llama.last.json["stream_options"] == {"include_usage": True}  # forwarded as sent


def test_openai_client_reads_the_added_usage(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(chat_chunks(["a", "b"], model=MODEL), delay=0.01))
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_a_backend_usage_chunk_is_not_doubled(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(chat_chunks(["x", "y"], model=MODEL, usage=True)))
    body = _body(stream=True, stream_options={"include_usage": True})
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10).text)
    usage = _usage_events(events)
    assert len(usage) == 1
    assert usage[0]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_no_usage_unless_asked(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(chat_chunks(["x"], model=MODEL)))
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=_body(stream=True), timeout=10).text)
    assert _usage_events(events) == [] and events[-1] == "[DONE]"


def test_no_usage_added_for_an_openai_backend(plain: FakeBackend, tmp_path: Path) -> None:
    store, running = _proxy(tmp_path, plain)
    plain.enqueue(stream(chat_chunks(["x"], model=MODEL)))
    with store, running as url:
        body = _body(stream=True, stream_options={"include_usage": True})
        events = _events(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).text)
    assert _usage_events(events) == []


def test_a_stream_ending_without_done_gets_an_error_not_a_usage(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(chat_chunks(["x", "y"], model=MODEL)[:-1]))
    body = _body(stream=True, stream_options={"include_usage": True})
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10).text)
    assert events[-1]["error"]["code"] == "bad_backend_response"
    assert _usage_events(events) == []


@pytest.mark.parametrize(
    "bad",
    [
        # Each kind of defect the filler reads; tests/test_proxy_backend_output.py has the rest.
        {"id": "c", "choices": 5},
        {"id": "c", "choices": [{"index": 0, "delta": "text", "finish_reason": None}]},
        b"data: not json\n\n",
    ],
)
@pytest.mark.parametrize("route", ["chat", "bypass", "completions"])
def test_a_malformed_event_ends_the_usage_filled_stream_with_an_error(
    proxy: str, llama: FakeBackend, bad: Any, route: str
) -> None:
    body: dict[str, Any] = _body(stream=True, stream_options={"include_usage": True})
    path, headers = "/v1/chat/completions", {"x-drpo-bypass": "1"} if route == "bypass" else {}
    good: list[Any] = chat_chunks(["x"], model=MODEL)[:2]
    if route == "completions":
        path, body = "/v1/completions", {"model": MODEL, "prompt": "p", **body}
        del body["messages"]
        good = completion_chunks(["x"], model=MODEL)[:1]
    llama.enqueue(stream([*good, bad, *good]))
    response = httpx.post(f"{proxy}{path}", json=body, headers=headers, timeout=10)
    assert response.status_code == 200
    events = _events(response.text)
    assert len(events) == len(good) + 1 and _usage_events(events) == []
    assert events[-1]["error"]["code"] == "bad_backend_response"
    # A malformed first event: nothing was sent yet, so a plain 502.
    llama.enqueue(stream([bad, *good]))
    failed = httpx.post(f"{proxy}{path}", json=body, headers=headers, timeout=10)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "bad_backend_response"


def test_openai_client_raises_api_error_on_a_malformed_llamacpp_event(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream([*chat_chunks(["a"], model=MODEL)[:2], {"id": "c", "choices": 5}]))
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        with pytest.raises(openai.APIError) as raised:
            list(chunks)
    assert not isinstance(raised.value, openai.APIConnectionError)


def test_no_usage_after_an_error_event(proxy: str, llama: FakeBackend) -> None:
    failure = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    llama.enqueue(stream([*chat_chunks(["x"], model=MODEL)[:2], failure, "[DONE]"]))
    body = _body(stream=True, stream_options={"include_usage": True})
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10).text)
    assert _usage_events(events) == [] and events[-1] == "[DONE]"


def test_completion_mode_stream_gets_usage(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(completion_chunks([" Par", "is", "\n<END>"], model=BASE)))
    body = {**_body(stream=True, stream_options={"include_usage": True}), "model": BASE}
    events = _events(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=10).text)
    assert llama.last.path == "/v1/completions"
    usage = _usage_events(events)
    assert len(usage) == 1 and usage[0] is events[-2]
    assert usage[0]["object"] == "chat.completion.chunk" and usage[0]["id"].startswith("chatcmpl-")
    assert usage[0]["usage"]["completion_tokens"] == 3  # every generated token, the trimmed marker too
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if isinstance(e, dict))
    assert text == "Paris"


def test_completions_passthrough_stream_gets_usage(proxy: str, llama: FakeBackend) -> None:
    llama.enqueue(stream(completion_chunks(["a", "b", "c", "d"], model=MODEL)))
    body = {"model": MODEL, "prompt": "count:", "stream": True, "stream_options": {"include_usage": True}}
    events = _events(httpx.post(f"{proxy}/v1/completions", json=body, timeout=10).text)
    usage = _usage_events(events)
    assert len(usage) == 1 and usage[0] is events[-2]
    assert usage[0]["object"] == "text_completion" and usage[0]["id"] == "cmpl-fake"
    assert usage[0]["usage"]["completion_tokens"] == 4
    assert usage[0]["usage"]["prompt_tokens"] == estimate_prompt_tokens({"prompt": "count:"})


# -- the real embedded backend ---------------------------------------------------------


@pytest.mark.integration
def test_structured_output_and_stream_usage_on_the_embedded_backend(
    embedded_backend: EmbeddedBackend, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, embedded_backend.base_url, read_timeout=120)
    messages: Any = [{"role": "user", "content": "Give one city and its population as JSON."}]
    with (
        PromptStore(tmp_path / "store") as store,
        running_proxy(settings, None, store) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client,
    ):
        answer = client.chat.completions.create(
            model=EMBEDDED_MODEL_ID,
            messages=messages,
            max_tokens=40,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
        )
        data = json.loads(answer.choices[0].message.content or "")
        assert isinstance(data["city"], str) and isinstance(data["population"], int)
        assert answer.usage is not None

        chunks = list(
            client.chat.completions.create(
                model=EMBEDDED_MODEL_ID,
                messages=messages,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        exact = client.chat.completions.create(
            model=EMBEDDED_MODEL_ID, messages=messages, max_tokens=12, temperature=0
        ).usage
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert sum(1 for c in chunks if c.usage is not None) == 1
    assert exact is not None
    # One token per chunk: the count matches the backend's own count for the same greedy answer.
    assert last.usage.completion_tokens == exact.completion_tokens
    assert abs(last.usage.prompt_tokens - exact.prompt_tokens) <= 0.25 * exact.prompt_tokens


def test_a_busy_llamacpp_backend_is_not_asked_for_its_models(llama: FakeBackend, tmp_path: Path) -> None:
    # llama-cpp-python serves /v1/models under its model lock: asking during a stream cuts it short.
    store, running = _proxy(tmp_path, llama, models_cache_ttl=0.01, ready_cache_ttl=0)  # every /ready asks
    release = threading.Event()  # the stream stays in flight until every check below is done
    llama.enqueue(stream(chat_chunks(["a", "b", "c", "d"], model=MODEL), hold=release))
    with store, running as url:
        result: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: result.append(httpx.post(f"{url}/v1/chat/completions", json=_body(stream=True), timeout=60))
        )
        # Longer than the cache TTL, so routing the request finds the model list stale and
        # starts a background refresh: that must not reach the backend either.
        time.sleep(0.05)
        asked_before = sum(1 for r in llama.requests if r.method == "GET")
        worker.start()
        try:
            assert wait_for(lambda: len(llama.posts()) == 1, timeout=30.0)
            assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
            ready = httpx.get(f"{url}/ready", timeout=30)
            asked_during = sum(1 for r in llama.requests if r.method == "GET") - asked_before
        finally:
            release.set()
            worker.join()
        assert ready.status_code == 200 and ready.json()["backends"] == {"default": "ok"}
        # Idle again: discovery resumes.
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
        asked_after = sum(1 for r in llama.requests if r.method == "GET") - asked_before
    assert result[0].text.count("data: ") == 7
    assert asked_during == 0 and asked_after == 1
