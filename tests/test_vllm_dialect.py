"""The vLLM dialect (``kind: vllm``) through the real proxy, in front of the stand-in vLLM.

Structured outputs in vLLM's form, its own usage chunk, its extra sampling fields
forwarded unchanged (chat and completion layouts), discovery from ``owned_by``, and the
prompt order that lets vLLM's automatic prefix caching reuse the injected prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.shared_params import ResponseFormatJSONSchema

from drpo.vllm_backend import VLLMBackend
from prompts.config import FileConfig, ModelOptions
from prompts.dialects import (
    VLLM,
    VLLM_EXTRA_FIELDS,
    kind_from_models,
    llamacpp_json_format,
    rewrite_json_object_schema_format,
    vllm_completion_format,
    vllm_json_format,
)
from prompts.layout import PreparedArtifact, build_chat_messages, build_completion_prompt
from prompts.store import PromptStore
from proxy.injection import _CHAT_ONLY
from tests.fakes.proxy_harness import SYSTEM_PROMPT, make_artifact, make_settings, running_proxy
from tests.fakes.vllm_path import fake_vllm_env

CHAT = "org/instruct-model"
SCHEMA: dict[str, object] = {"type": "object", "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}}}
EXTRAS: dict[str, Any] = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "min_tokens": 1,
    "stop_token_ids": [7],
    "structured_outputs": {"choice": ["yes", "no"]},
    "guided_choice": ["yes", "no"],
    "priority": 0,
}


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMBackend]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in fake_vllm_env().items():
            patch.setenv(name, value)
        log = tmp_path_factory.mktemp("vllm") / "vllm.log"
        with VLLMBackend(CHAT, ["--enable-prompt-tokens-details"], log_path=log, ready_timeout=60) as server:
            yield server


def _received(vllm: VLLMBackend) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = httpx.get(f"{vllm.root_url}/fake/requests", timeout=5).json()
    return requests


@pytest.fixture
def chat_proxy(vllm: VLLMBackend, tmp_path: Path) -> Iterator[str]:
    """The proxy in front of vLLM, kind ``auto``: the dialect is discovered from /v1/models."""
    with PromptStore(tmp_path / "store") as store:
        store.put(make_artifact(CHAT, k=1), activate=True)
        with running_proxy(make_settings(tmp_path, vllm.base_url), None, store) as url:
            yield url


@pytest.fixture
def completion_proxy(vllm: VLLMBackend, tmp_path: Path) -> Iterator[str]:
    config = FileConfig(models={CHAT: ModelOptions(mode="completion")})
    with PromptStore(tmp_path / "store") as store:
        store.put(make_artifact(CHAT, k=1), activate=True)
        with running_proxy(make_settings(tmp_path, vllm.base_url, backend_kind="vllm"), config, store) as url:
            yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


# -- units -------------------------------------------------------------------------------------


def test_vllm_is_recognised_from_owned_by() -> None:
    assert kind_from_models([{"id": CHAT, "owned_by": "vllm", "root": CHAT, "max_model_len": 4096}]) == VLLM


def test_json_formats_in_vllms_form() -> None:
    assert vllm_json_format(SCHEMA) == {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}
    assert vllm_json_format(None) == {"type": "json_object"}
    body: dict[str, Any] = {"response_format": llamacpp_json_format(SCHEMA)}
    assert rewrite_json_object_schema_format(body) and body["response_format"] == vllm_json_format(SCHEMA)
    for untouched in ({"type": "json_object"}, {"type": "text"}, vllm_json_format(SCHEMA), "json", None):
        body = {"response_format": untouched}
        assert not rewrite_json_object_schema_format(body) and body == {"response_format": untouched}


def test_the_completion_layout_keeps_structured_outputs_for_vllm_only_in_forms_it_reads() -> None:
    assert vllm_completion_format({"response_format": vllm_json_format(SCHEMA)}) == vllm_json_format(SCHEMA)
    assert vllm_completion_format({"response_format": llamacpp_json_format(SCHEMA)}) == vllm_json_format(SCHEMA)
    assert vllm_completion_format({"response_format": {"type": "json_object"}}) == {"type": "json_object"}
    assert vllm_completion_format({"response_format": {"type": "text"}}) is None
    assert vllm_completion_format({}) is None


def test_no_vllm_extra_field_is_dropped_by_the_completion_layout() -> None:
    assert not VLLM_EXTRA_FIELDS & _CHAT_ONLY


def test_the_injected_prompt_puts_the_stable_part_first() -> None:
    """Automatic prefix caching reuses the longest common token prefix of two requests: our
    system prompt (the same for every request) comes first, the client's system text after
    it, then the retrieved examples (which change with the query), then the conversation."""
    prepared = PreparedArtifact.build(make_artifact(CHAT, k=2))
    one = build_chat_messages(prepared, [{"role": "system", "content": "CLIENT"}, {"role": "user", "content": "sea"}])
    two = build_chat_messages(prepared, [{"role": "system", "content": "CLIENT"}, {"role": "user", "content": "bread"}])
    assert one[0] == two[0] == {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nCLIENT"}
    assert [m["role"] for m in one] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert one[-1] == {"role": "user", "content": "sea"} and one[1:-1] != two[1:-1]
    prompt = build_completion_prompt(prepared, [{"role": "user", "content": "sea"}])
    other = build_completion_prompt(prepared, [{"role": "user", "content": "bread"}])
    stable = f"# Instructions:\n{SYSTEM_PROMPT}\n\n"
    assert prompt.startswith(stable) and other.startswith(stable)
    assert prompt.index("# Query:\nsea") > prompt.index("EXAMPLE-")


# -- through the proxy -------------------------------------------------------------------------


def test_models_are_discovered_with_vllms_fields(chat_proxy: str) -> None:
    models = httpx.get(f"{chat_proxy}/v1/models", timeout=5).json()["data"]
    assert [(m["id"], m["owned_by"], m["root"]) for m in models] == [(CHAT, "vllm", CHAT)]


def test_extra_sampling_fields_reach_vllm_unchanged(chat_proxy: str, vllm: VLLMBackend) -> None:
    _client(chat_proxy).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body=EXTRAS
    )
    sent = _received(vllm)[-1]
    assert {name: sent[name] for name in EXTRAS} == EXTRAS
    assert sent["messages"][0]["content"] == SYSTEM_PROMPT  # injected, and nothing else changed


def test_extra_sampling_fields_survive_the_completion_layout(completion_proxy: str, vllm: VLLMBackend) -> None:
    answer = _client(completion_proxy).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body=EXTRAS
    )
    assert answer.choices[0].message.content == "A plain answer."
    sent = _received(vllm)[-1]
    assert "prompt" in sent and {name: sent[name] for name in EXTRAS} == EXTRAS


def test_structured_output_in_openais_form_is_passed_through(chat_proxy: str, vllm: VLLMBackend) -> None:
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
    }
    answer = _client(chat_proxy).chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Where?"}],
        response_format=response_format,
    )
    assert json.loads(answer.choices[0].message.content or "") == {"city": "fake", "rank": 0}
    assert _received(vllm)[-1]["response_format"] == response_format


def test_llamacpp_style_schema_is_turned_into_vllms_form(chat_proxy: str, vllm: VLLMBackend) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Where?"}]}
    for headers in ({}, {"x-drpo-bypass": "1"}):  # injected and bypassed requests alike
        response = httpx.post(
            f"{chat_proxy}/v1/chat/completions",
            json={**body, "response_format": llamacpp_json_format(SCHEMA)},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert _received(vllm)[-1]["response_format"] == vllm_json_format(SCHEMA)
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"city": "fake", "rank": 0}


def test_structured_output_survives_the_completion_layout(completion_proxy: str, vllm: VLLMBackend) -> None:
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA},
    }
    answer = _client(completion_proxy).chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Where?"}],
        response_format=response_format,
    )
    sent = _received(vllm)[-1]
    assert "prompt" in sent and sent["response_format"] == response_format
    assert json.loads(answer.choices[0].message.content or "") == {"city": "fake", "rank": 0}


@pytest.mark.parametrize("layout", ["chat", "completion"])
def test_vllms_own_usage_chunk_reaches_the_client(
    layout: str, chat_proxy: str, completion_proxy: str, vllm: VLLMBackend
) -> None:
    proxy = chat_proxy if layout == "chat" else completion_proxy
    chunks = list(
        _client(proxy).chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "count to three"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and chunks[-1].choices == [] and chunks[-1].usage is usages[0]
    usage = usages[0]
    assert usage.model_extra is None or "estimated" not in usage.model_extra  # vLLM counted it, we did not
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_prefix_cache_reuses_the_system_prompt_across_questions(chat_proxy: str, vllm: VLLMBackend) -> None:
    client = _client(chat_proxy)
    client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "a poem on the sea"}])
    second = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "bake sourdough"}])
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    system_tokens = len(f"<|system|>\n{SYSTEM_PROMPT}\n".split())
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert system_tokens - 4 <= cached < second.usage.prompt_tokens  # the examples differ: not all of it
