"""Retrieval method ``backend``: example similarity from the backend's /v1/embeddings, through the proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from pydantic import ValidationError

from prompts.artifact import Artifact, Example, RetrievalSettings
from prompts.layout import PreparedArtifact
from prompts.remote_embeddings import BackendEmbeddings
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend, JsonReply, chat_completion, error
from tests.fakes.proxy_harness import make_settings, running_proxy

MODEL = "fake-model"
REFUSAL = "I'm sorry, but I can't help with that."
HELP = "Here is how."
RETRIEVAL = RetrievalSettings(k=2, method="backend", embedding_model="emb-model", neighbours=2)
ARTIFACT = Artifact(
    model=MODEL,
    system_prompt="Be safe.",
    examples=(
        Example(query="zzz one", answer=REFUSAL, label="refusal"),
        Example(query="zzz two", answer=REFUSAL, label="refusal"),
        Example(query="yyy three", answer=HELP, label="helpful"),
        Example(query="yyy four", answer=HELP, label="helpful"),
    ),
    retrieval=RETRIEVAL,
)
# The scripted embedding model puts refusal examples on one axis and helpful ones on the other.
LIBRARY = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]


def _vectors(rows: list[list[float]]) -> JsonReply:
    return JsonReply({"object": "list", "data": [{"index": i, "embedding": r} for i, r in enumerate(rows)]})


def _embedding_calls(backend: FakeBackend) -> list[Any]:
    return [r.json for r in backend.posts() if r.path.endswith("/embeddings")]


def _answers_shown(backend: FakeBackend) -> list[str]:
    chat = [r.json for r in backend.posts() if r.path.endswith("/chat/completions")][-1]
    return [m["content"] for m in chat["messages"] if m["role"] == "assistant"]


@pytest.fixture
def backend() -> Any:
    with FakeBackend(models=(MODEL,)) as fake:
        yield fake


def _ask(base: str, text: str) -> None:
    client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])


def test_the_backend_method_needs_an_embedding_model() -> None:
    with pytest.raises(ValidationError, match=r"needs retrieval\.embedding_model"):
        RetrievalSettings(method="backend")


def test_the_proxy_selects_by_the_backends_embeddings_and_caches_the_library(
    backend: FakeBackend, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, backend.url)
    with PromptStore(settings.store_dir) as store:
        store.put(ARTIFACT, activate=True)
    backend.enqueue(_vectors(LIBRARY), _vectors([[1.0, 0.05]]), JsonReply(chat_completion()))
    with running_proxy(settings) as base:
        _ask(base, "a request the scripted model calls harmful")
        assert _answers_shown(backend) == [REFUSAL, REFUSAL]
        library_call, query_call = _embedding_calls(backend)
        assert library_call == {"model": "emb-model", "input": ["zzz one", "zzz two", "yyy three", "yyy four"]}
        assert query_call == {"model": "emb-model", "input": ["a request the scripted model calls harmful"]}

        backend.enqueue(_vectors([[0.05, 1.0]]), JsonReply(chat_completion()))
        _ask(base, "an ordinary request")
        assert _answers_shown(backend) == [HELP, HELP]
        assert len(_embedding_calls(backend)) == 3, "the library is embedded once per version"

    backend.reset()
    backend.enqueue(_vectors([[1.0, 0.0]]), JsonReply(chat_completion()))
    with running_proxy(settings) as base:  # a restart reads the library's vectors from disk
        _ask(base, "harmful again")
        assert [c["input"] for c in _embedding_calls(backend)] == [["harmful again"]]
        assert _answers_shown(backend) == [REFUSAL, REFUSAL]


def test_a_failing_embeddings_endpoint_falls_back_to_bm25_and_never_fails_a_request(
    backend: FakeBackend, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, backend.url)
    with PromptStore(settings.store_dir) as store:
        store.put(ARTIFACT, activate=True)
    backend.enqueue(error(500, "no embedding model here"), JsonReply(chat_completion()))
    with running_proxy(settings) as base:
        _ask(base, "tell me about yyy things")
        # BM25 over the example queries: "yyy" matches the helpful ones.
        assert _answers_shown(backend) == [HELP, HELP]


def test_the_evaluator_scores_with_the_same_remote_embeddings(backend: FakeBackend) -> None:
    backend.enqueue(_vectors(LIBRARY), _vectors([[1.0, 0.0]]))
    prepared = PreparedArtifact.build(ARTIFACT)

    async def go() -> list[str]:
        async with httpx.AsyncClient() as client:
            remote = BackendEmbeddings(backend.url, client)
            scores = await remote.scores(prepared, "anything")
        assert scores is not None
        return [e.answer for e in prepared.select_examples("anything", scores=scores)]

    assert asyncio.run(go()) == [REFUSAL, REFUSAL]
