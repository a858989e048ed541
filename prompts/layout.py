"""The prompt layout shared by serving (proxy) and training (optimizer).

One module builds what the model sees, so the optimizer scores exactly the layout the
proxy will serve: training/serving skew is a bug.

Chat layout::

    system: <artifact system prompt>[\n\n<client system text>]   (one leading system message)
    user: <example 1 query>
    assistant: <example 1 answer>
    ...                                                           (top-K examples, injected once)
    <the client's conversation, system/developer messages removed>

Examples go in as real user/assistant turns rather than inside the system text: small
chat models imitate prior turns much more reliably than they follow instructions.

The order is also the one that caches best. Servers with automatic prefix caching (vLLM,
and llama.cpp's slot cache) reuse the computed attention state of the longest token
prefix a request shares with an earlier one. So the parts go from the most to the least
shared: our system prompt (the same for every request to a model version), the client's
system text (the same for every request of one application), the retrieved examples
(the same for similar queries), and last the conversation. Putting the examples or the
client's text first would make every request's prefix differ from the first tokens on.
The price: the examples follow the *latest* user message, so a multi-turn conversation's
earlier turns sit behind a block that may change from turn to turn and are recomputed.
``bench/injected_tokens.py`` measures the stable share (BENCHMARKS.md).

Completion layout (base models without a chat template): one raw prompt made of the
instructions, then ``# Query:`` / ``# Answer:`` blocks for each example and each turn of
the conversation, the last answer opened with :data:`START_MARKER`; generation stops at
:data:`END_MARKER`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from prompts.artifact import Artifact, Example
from prompts.retrieval import EncodesQueries, Scorer, Scores, build_scorer
from prompts.selection import Selector

SystemPolicy = Literal["merge", "replace", "client"]
SYSTEM_ROLES = frozenset({"system", "developer"})
START_MARKER = "<START>"
END_MARKER = "<END>"
COMPLETION_STOP = [END_MARKER]

Message = dict[str, Any]


def content_text(content: Any) -> str:
    """Plain text of an OpenAI message ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def latest_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


@dataclass(frozen=True)
class PreparedArtifact:
    """An artifact plus its retrieval index and selector, built once and reused per request."""

    artifact: Artifact
    scorer: Scorer
    selector: Selector

    @classmethod
    def build(cls, artifact: Artifact) -> PreparedArtifact:
        examples = artifact.examples
        scorer = build_scorer(artifact.retrieval.method, [e.query for e in examples])
        return cls(artifact, scorer, Selector([e.label for e in examples]))

    @cached_property
    def query_encoder(self) -> EncodesQueries | None:
        """The scorer, when its query side is a model a server may batch (see :class:`EncodesQueries`)."""
        return self.scorer if isinstance(self.scorer, EncodesQueries) and self.artifact.examples else None

    @property
    def needs_remote_scores(self) -> bool:
        """Whether similarity comes from a backend's embeddings (``retrieval.method == "backend"``)."""
        return self.artifact.retrieval.method == "backend" and bool(self.artifact.examples)

    def select_examples(self, query: str, k: int | None = None, scores: Scores | None = None) -> list[Example]:
        """The examples to show; ``scores`` (one per example) replace the built-in scorer's when given."""
        retrieval = self.artifact.retrieval
        count = retrieval.k if k is None else k
        examples = self.artifact.examples
        if count <= 0 or not examples:
            return []
        if scores is None or len(scores) != len(examples):
            scores = self.scorer.scores(query)
        return [examples[i] for i in self.selector.select(scores, count, retrieval)]


def merge_system(ours: str, client_texts: Iterable[str], policy: SystemPolicy) -> str | None:
    """The text of the single leading system message under a policy.

    ``merge``: ours first, the client's after. ``replace``: ours only. ``client``: the
    client's only. None when the result would be empty (no system message at all).
    """
    theirs = [t for t in client_texts if t.strip()]
    if policy == "replace":
        return ours if ours.strip() else None  # never send an empty system message
    if policy == "client":
        return "\n\n".join(theirs) if theirs else None
    return "\n\n".join([ours, *theirs]) if ours.strip() else ("\n\n".join(theirs) or None)


def build_chat_messages(
    prepared: PreparedArtifact,
    messages: Sequence[Message],
    policy: SystemPolicy = "merge",
    k: int | None = None,
    scores: Scores | None = None,
) -> list[Message]:
    """The client's conversation with our system prompt and examples injected once."""
    system_texts = [content_text(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES]
    rest = [m for m in messages if m.get("role") not in SYSTEM_ROLES]
    out: list[Message] = []
    system = merge_system(prepared.artifact.system_prompt, system_texts, policy)
    if system is not None:
        out.append({"role": "system", "content": system})
    for example in prepared.select_examples(latest_user_text(messages), k, scores):
        out.append({"role": "user", "content": example.query})
        out.append({"role": "assistant", "content": example.answer})
    out.extend(rest)
    return out


def _answer_block(answer: str) -> str:
    return f"# Answer:\n{START_MARKER}\n{answer}\n{END_MARKER}\n\n"


def build_completion_prompt(
    prepared: PreparedArtifact,
    messages: Sequence[Message],
    policy: SystemPolicy = "merge",
    k: int | None = None,
    scores: Scores | None = None,
) -> str:
    """A raw prompt for base models; complete it with ``stop=COMPLETION_STOP``."""
    system_texts = [content_text(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES]
    instructions = merge_system(prepared.artifact.system_prompt, system_texts, policy) or ""
    parts = [f"# Instructions:\n{instructions.strip()}\n\n"] if instructions.strip() else []
    for example in prepared.select_examples(latest_user_text(messages), k, scores):
        parts.append(f"# Query:\n{example.query}\n\n")
        parts.append(_answer_block(example.answer))
    for message in messages:
        role = message.get("role")
        text = content_text(message.get("content"))
        if role == "user":
            parts.append(f"# Query:\n{text}\n\n")
        elif role == "assistant":
            parts.append(_answer_block(text))
    parts.append(f"# Answer:\n{START_MARKER}\n")
    return "".join(parts)


def strip_completion_answer(text: str) -> str:
    """The answer text from a completion: everything before the end marker, trimmed."""
    end = text.find(END_MARKER)
    if end >= 0:
        text = text[:end]
    return text.strip()
