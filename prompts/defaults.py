"""The default artifact, served for any model id that has none of its own.

(Placeholder content: being written and measured; see BENCHMARKS.md.)
"""

from __future__ import annotations

from functools import lru_cache

from prompts.artifact import Artifact, Example, Provenance, RetrievalSettings

DEFAULT_MODEL_ID = "*"


@lru_cache(maxsize=1)
def default_artifact() -> Artifact:
    return Artifact(
        model=DEFAULT_MODEL_ID,
        system_prompt="You are a helpful, honest and harmless assistant.",
        examples=(Example(query="How do I stop a running Python process?", answer="Press Ctrl-C in its terminal."),),
        retrieval=RetrievalSettings(k=3),
        provenance=Provenance(method="default"),
    )
