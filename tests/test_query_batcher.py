"""Model-encoded retrieval (MiniLM) off the event loop: concurrent requests' messages are encoded
together, and what each request is shown is exactly what unbatched selection shows."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from prompts.artifact import Artifact, Example, RetrievalSettings
from prompts.layout import PreparedArtifact
from prompts.retrieval import EncodesQueries, build_scorer
from prompts.store import PromptStore
from proxy.query_batcher import QueryBatcher
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_settings, running_proxy


class ScriptedEncoder:
    """Encodes a text as [len(text)]; the first call waits until released, so others queue up."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            assert self.release.wait(10)
        return np.array([[float(len(t))] for t in texts])


def test_requests_that_arrive_while_one_is_encoded_share_the_next_batch() -> None:
    async def scenario() -> None:
        encoder = ScriptedEncoder()
        batcher = QueryBatcher(encoder, max_batch=4)
        first = asyncio.create_task(batcher.vector("a"))
        await asyncio.sleep(0)  # the first is handed to the worker thread at once
        rest = [asyncio.create_task(batcher.vector("b" * n)) for n in range(1, 7)]
        await asyncio.sleep(0.05)  # the event loop keeps running while the thread encodes
        encoder.release.set()
        assert float((await first)[0]) == 1.0
        assert [float(v[0]) for v in await asyncio.gather(*rest)] == [1, 2, 3, 4, 5, 6]
        assert [len(call) for call in encoder.calls] == [1, 4, 2]  # no more than max_batch at once
        assert batcher.batches == 3

    asyncio.run(scenario())


def test_a_failed_encoding_fails_its_batch_and_the_next_one_works() -> None:
    async def scenario() -> None:
        calls = 0

        def flaky(texts: Sequence[str]) -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("encoder broke")
            return np.ones((len(texts), 2))

        batcher = QueryBatcher(flaky)
        with pytest.raises(RuntimeError, match="encoder broke"):
            await batcher.vector("x")
        assert list(await batcher.vector("y")) == [1.0, 1.0]

    asyncio.run(scenario())


def test_a_cancelled_request_is_skipped_and_does_not_block_the_others() -> None:
    async def scenario() -> None:
        encoder = ScriptedEncoder()
        batcher = QueryBatcher(encoder)
        first = asyncio.create_task(batcher.vector("a"))
        await asyncio.sleep(0)
        gone = asyncio.create_task(batcher.vector("gone"))
        kept = asyncio.create_task(batcher.vector("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        encoder.release.set()
        await first
        assert float((await kept)[0]) == 4.0
        assert encoder.calls == [["a"], ["kept"]]

    asyncio.run(scenario())


# -- with the real MiniLM encoder, through the proxy ---------------------------------------------

MODEL = "minilm-model"
LIBRARY = (
    Example(query="How do I stop a frozen program on Linux?", answer="EX-PROCESS use kill PID.", label="helpful"),
    Example(query="How can I hurt someone and not get caught?", answer="EX-REFUSE I'm sorry, no.", label="refusal"),
    Example(query="Suggest a recipe for a quick pasta dinner.", answer="EX-PASTA garlic and oil.", label="general"),
    Example(query="Write a short poem about autumn leaves.", answer="EX-POEM red and gold.", label="general"),
    Example(query="What is the capital of France?", answer="EX-PARIS it is Paris.", label="general"),
)
QUESTIONS = [
    "My terminal app hangs, how do I end it?",
    "How could I injure a neighbour without anyone knowing?",
    "Any ideas for a fast spaghetti meal tonight?",
    "Compose four lines about falling leaves.",
    "Which city is France's capital?",
    "How do I kill a Python process that ignores Ctrl+C?",
    "Give me a haiku about the sea.",
    "What's a good dinner with tomatoes?",
]


@pytest.mark.usefixtures("minilm_weights")
def test_minilm_scores_from_a_batch_equal_the_scores_of_one_query() -> None:
    scorer = build_scorer("minilm", [e.query for e in LIBRARY])
    assert isinstance(scorer, EncodesQueries)
    vectors = scorer.encode_queries([scorer.query_text(q) for q in QUESTIONS])
    for question, vector in zip(QUESTIONS, vectors, strict=True):
        np.testing.assert_allclose(scorer.scores_for(vector), scorer.scores(question), atol=1e-5)
    assert build_scorer("embedding", ["a"]) is not None
    assert not isinstance(build_scorer("embedding", ["a"]), EncodesQueries)


@pytest.mark.usefixtures("minilm_weights")
def test_concurrent_requests_through_the_proxy_see_what_selection_alone_would_show(tmp_path: Path) -> None:
    settings = RetrievalSettings(k=1, method="minilm", neighbours=3, refusal_share=0.6, min_similarity=0.2)
    artifact = Artifact(model=MODEL, system_prompt="Be helpful.", examples=LIBRARY, retrieval=settings)
    with PromptStore(tmp_path / "store") as store:
        store.put(artifact, activate=True)
    prepared = PreparedArtifact.build(artifact)
    expected = {q: prepared.select_examples(q)[0].answer for q in QUESTIONS}
    assert len(set(expected.values())) >= 4  # the questions reach different examples

    async def ask_all(base: str) -> list[Any]:
        async with AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
            calls = [
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}])
                for q in QUESTIONS * 2
            ]
            return await asyncio.gather(*calls)

    with FakeBackend(models=(MODEL,)) as backend, running_proxy(make_settings(tmp_path, backend.url)) as base:
        replies = asyncio.run(ask_all(base))
        assert len(replies) == 2 * len(QUESTIONS)
        posts = [p.json for p in backend.posts()]
    assert len(posts) == 2 * len(QUESTIONS)
    for body in posts:
        question = body["messages"][-1]["content"]
        shown = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert shown == [expected[question]], question
