"""No request body, however odd, makes the proxy answer 5xx (issue 6: client input is never a 500).

Hypothesis builds chat bodies with arbitrary JSON where the proxy looks (messages' roles and
contents, stream options, response_format, stop, token limits) and deep nesting where it
re-encodes, for a chat-mode and a completion-mode model behind a llama.cpp-like backend
(so the response_format rewrite and the usage filler run too), with and without bypass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompts.config import FileConfig, ModelOptions
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy

CHAT = "fuzz-chat"
BASE = "fuzz-base"  # completion mode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "", "x"])},
        optional={"content": json_values, "name": json_values, "tool_calls": json_values},
    ),
    min_size=1,
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([CHAT, BASE]), "messages": messages},
    optional={
        "stream": st.booleans(),
        "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
        "response_format": st.one_of(
            st.just({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}), json_values
        ),
        "stop": json_values,
        "max_tokens": json_values,
        "max_completion_tokens": json_values,
        "metadata": json_values,
    },
)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    config = FileConfig(models={BASE: ModelOptions(mode="completion", k=1)})
    with FakeBackend(models=[CHAT, BASE], owned_by="me") as backend, PromptStore(tmp / "store") as store:
        store.put(make_artifact(CHAT), activate=True)
        store.put(make_artifact(BASE), activate=True)
        with running_proxy(make_settings(tmp, backend.url), config, store) as url:
            yield url


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies, st.booleans(), st.sampled_from([0, 0, 260, 1000]))
def test_no_body_gives_a_server_error(proxy: str, body: dict[str, Any], bypass: bool, depth: int) -> None:
    raw = orjson.dumps(body)
    if depth:  # nesting orjson reads but cannot write back
        raw = raw[:-1] + b', "deep": ' + _deep(depth) + b"}"
    headers = {"content-type": "application/json", **({"x-drpo-bypass": "1"} if bypass else {})}
    response = httpx.post(f"{proxy}/v1/chat/completions", content=raw, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
