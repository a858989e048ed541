"""Answers from the target model under a candidate, through the proxy's own layout.

The candidate is turned into a real :class:`~prompts.artifact.Artifact` and rendered
with :mod:`prompts.layout`, exactly as ``drpo serve`` will render it: no training /
serving skew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimizer.llm import Endpoint, LLMClient
from prompts.artifact import Artifact, Example, Layout, RetrievalSettings
from prompts.layout import (
    COMPLETION_STOP,
    PreparedArtifact,
    build_chat_messages,
    build_completion_prompt,
    strip_completion_answer,
)
from prompts.retrieval import Scores


@dataclass(frozen=True)
class Candidate:
    """What the proxy would serve: a system prompt plus an example library."""

    system_prompt: str
    examples: tuple[Example, ...]
    retrieval: RetrievalSettings


class Target:
    def __init__(self, llm: LLMClient, endpoint: Endpoint, layout: Layout = "chat", max_tokens: int = 200) -> None:
        self.llm = llm
        self.endpoint = endpoint
        self.layout: Layout = layout
        self.max_tokens = max_tokens
        self._prepared: dict[Candidate, PreparedArtifact] = {}

    def prepare(self, candidate: Candidate) -> PreparedArtifact:
        if candidate not in self._prepared:
            artifact = Artifact(
                model=self.endpoint.model,
                system_prompt=candidate.system_prompt,
                examples=candidate.examples,
                retrieval=candidate.retrieval,
                layout=self.layout,
            )
            self._prepared[candidate] = PreparedArtifact.build(artifact)
        return self._prepared[candidate]

    async def answer(self, candidate: Candidate, query: str) -> str:
        # Greedy decoding, like the reference: the step reward should reflect the prompt, not luck.
        params = {"model": self.endpoint.model, "temperature": 0.0, "max_tokens": self.max_tokens}
        return await served_answer(self.llm, self.endpoint, self.prepare(candidate), self.layout, query, params)


async def served_answer(
    llm: LLMClient,
    endpoint: Endpoint,
    prepared: PreparedArtifact,
    layout: Layout,
    query: str,
    params: dict[str, Any],
    scores: Scores | None = None,
) -> str:
    """The target's answer to ``query`` under ``prepared``, rendered exactly as the proxy serves it.

    ``scores`` are example similarities from a backend's embeddings (retrieval method ``backend``).
    """
    conversation = [{"role": "user", "content": query}]
    if layout == "completion":
        prompt = build_completion_prompt(prepared, conversation, scores=scores)
        done = await llm.generate(endpoint, "completion", {**params, "prompt": prompt, "stop": COMPLETION_STOP})
        return strip_completion_answer(done.text)
    messages = build_chat_messages(prepared, conversation, scores=scores)
    done = await llm.generate(endpoint, "chat", {**params, "messages": messages})
    return done.text.strip()
