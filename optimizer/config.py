"""The settings of one optimization run (every ``drpo optimize`` flag that shapes the search)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from optimizer.prompts_text import INITIAL_SYSTEM_PROMPT
from prompts.artifact import Layout

# Output caps per role, chosen so the default run fits in an hour on SmolLM2-135M at
# ~80 tokens/s (see `drpo optimize --dry-run`). Schemas also bound JSON string lengths.
TARGET_MAX_TOKENS = 160
SELECTOR_MAX_TOKENS = 160
JUDGE_MAX_TOKENS = 300
OPTIMIZER_MAX_TOKENS = 320


class OptimizeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    layout: Layout = "chat"
    beam: int = Field(default=2, ge=1)
    actions: int = Field(default=3, ge=1)
    # Levels of mini-batches (6 x 4 queries by default): about the budget of the earlier 20
    # single-query levels, with rewards that one query cannot swing.
    depth: int = Field(default=6, ge=0)
    max_depth_increase: int = Field(default=3, ge=0)
    optimizer_temperature: float = Field(default=0.2, ge=0, le=2)
    initial_prompt: str = INITIAL_SYSTEM_PROMPT
    seed: int = 0
    icl_queries: int = Field(default=16, ge=0)
    icl_iters: int = Field(default=5, ge=0)
    val_size: int = Field(default=10, ge=0)
    judge_samples: int = Field(default=1, ge=1)
    concurrency: int = Field(default=4, ge=1)
    max_calls: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    k: int = Field(default=3, ge=0, le=16)
    target_max_tokens: int = Field(default=TARGET_MAX_TOKENS, ge=1)
    selector_max_tokens: int = Field(default=SELECTOR_MAX_TOKENS, ge=1)
    judge_max_tokens: int = Field(default=JUDGE_MAX_TOKENS, ge=1)
    optimizer_max_tokens: int = Field(default=OPTIMIZER_MAX_TOKENS, ge=1)
    queries_source: str = "packaged seed set"
    val_source: str = ""  # a named labelled set for validation; empty: split off the training queries
    # Mini-batch: training queries per beam level and per library-stage round.
    batch_size: int = Field(default=4, ge=1)
    # Library stage: rounds (one mini-batch each) and edits proposed per round.
    library_rounds: int = Field(default=4, ge=0)
    library_edits: int = Field(default=2, ge=1)
    # How much worse a refusal metric may get on val before a candidate is disqualified.
    refusal_margin: float = Field(default=0.0, ge=0, le=1)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], **overrides: Any) -> OptimizeConfig:
        """A checkpoint's settings; one from before mini-batches and the library stage resumes as it was searched."""
        legacy = {"batch_size": 1, "library_rounds": 0}
        return cls.model_validate({**legacy, **saved, **overrides})
