"""Backend dialects have one home (prompts.dialects), and the proxy and the optimizer agree on it."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.llm import Endpoint, LLMClient, response_format
from prompts.dialects import (
    LLAMACPP,
    OPENAI,
    VLLM,
    kind_from_models,
    kind_from_owners,
    llamacpp_json_format,
    rewrite_json_schema_format,
)
from proxy.llamacpp import detect_kind, rewrite_response_format
from tests.fakes_llm import ScriptedLLM


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}

OWNERS = [
    ("me", LLAMACPP),  # llama-cpp-python's server
    ("llamacpp", LLAMACPP),  # llama.cpp's C++ server
    ("llama-cpp", LLAMACPP),
    ("LlamaCpp", LLAMACPP),
    ("llama.cpp", LLAMACPP),
    ("vllm", VLLM),
    ("openai", OPENAI),
    ("system", OPENAI),
    ("", OPENAI),
]


@pytest.mark.parametrize(("owner", "kind"), OWNERS)
def test_kind_from_owned_by(owner: str, kind: str) -> None:
    assert kind_from_owners([owner]) == kind
    assert kind_from_models([{"id": "m", "owned_by": owner}]) == kind


def test_kind_from_a_models_listing() -> None:
    assert kind_from_models([]) == OPENAI
    assert kind_from_models([{"id": "a"}, {"id": "b", "owned_by": None}, {"id": "c", "owned_by": "me"}]) == LLAMACPP


@pytest.mark.anyio
@pytest.mark.parametrize(("owner", "kind"), OWNERS)
async def test_the_proxy_and_the_optimizer_recognise_the_same_backends(owner: str, kind: str) -> None:
    assert detect_kind([{"id": "m", "owned_by": owner}]) == kind
    client = LLMClient(ScriptedLLM(owners=(owner,)))
    dialect = await client.dialect_for(Endpoint("target", "http://backend/v1", "m"))
    assert dialect == ("json_object" if kind == LLAMACPP else "json_schema")


def test_the_optimizers_json_object_format_is_what_the_proxy_rewrites_to() -> None:
    body: dict[str, Any] = {"response_format": response_format("json_schema", "x", SCHEMA)}
    assert rewrite_response_format(body)
    assert body["response_format"] == llamacpp_json_format(SCHEMA) == response_format("json_object", "x", SCHEMA)


def test_rewrite_only_touches_json_schema() -> None:
    for fmt in ({"type": "json_object"}, {"type": "text"}, "json", None):
        body: dict[str, Any] = {"response_format": fmt}
        assert not rewrite_json_schema_format(body)
        assert body == {"response_format": fmt}
    body = {"response_format": {"type": "json_schema", "json_schema": "not an object"}}
    assert rewrite_json_schema_format(body)
    assert body == {"response_format": {"type": "json_object"}}
