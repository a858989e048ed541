"""Projected cost of a run (``--dry-run``): an upper bound on calls and tokens.

Worst case: no early stop in Stage 1, every library round proposing every edit, no
skipped level in Stage 2, every output as long as its cap. Prompt sizes are estimated from the real prompt texts at ~4
characters per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optimizer import prompts_text as text
from optimizer.aspects import ASPECTS
from optimizer.config import OptimizeConfig

CHARS_PER_TOKEN = 4
_QUERY_TOKENS = 30


@dataclass
class Projection:
    calls: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, stage: str, calls: int, prompt: int, completion: int) -> None:
        self.calls[stage] = self.calls.get(stage, 0) + calls
        self.prompt_tokens += calls * prompt
        self.completion_tokens += calls * completion

    def seconds(self, gen_tps: float, prompt_tps: float) -> float:
        """Time on one sequential backend (llama.cpp serves one request at a time)."""
        return self.completion_tokens / gen_tps + self.prompt_tokens / prompt_tps


def _tok(s: str) -> int:
    return len(s) // CHARS_PER_TOKEN


def project(config: OptimizeConfig, n_train: int, n_val: int, n_icl: int) -> Projection:
    c = config
    j = c.judge_samples
    p = Projection()
    prompt_tok = _tok(c.initial_prompt) + 60
    answer_tok = c.target_max_tokens
    example_tok = _QUERY_TOKENS + min(c.optimizer_max_tokens, 375)
    target_in = prompt_tok + c.k * example_tok + _QUERY_TOKENS
    selector_in = _tok(text.SELECTOR_SYSTEM + text.SELECTOR_USER) + sum(_tok(a + d) + 2 for a, d in ASPECTS.items())
    judge_in = _tok(text.JUDGE_SYSTEM + text.JUDGE_USER) + 3 * 40 + _QUERY_TOKENS + answer_tok
    feedback_tok = 3 * 55
    rewrite_in = (
        _tok(text.PROMPT_REWRITE_SYSTEM + text.PROMPT_REWRITE_USER) + 4 * prompt_tok + answer_tok + feedback_tok
    )
    answer_rw_in = _tok(text.ANSWER_REWRITE_SYSTEM + text.ANSWER_REWRITE_USER) + answer_tok + feedback_tok

    b = max(1, min(c.batch_size, n_train)) if n_train else 0
    visited = min(n_train, (c.depth + c.max_depth_increase + 1) * c.batch_size)
    p.add("selector", n_icl + visited + n_val, selector_in + _QUERY_TOKENS, c.selector_max_tokens)
    # Stage 1: first answer + judge, then per round a rewrite + judge.
    p.add("examples", n_icl, prompt_tok + _QUERY_TOKENS, answer_tok)
    p.add("examples", n_icl * j, judge_in, c.judge_max_tokens)
    p.add("examples", n_icl * c.icl_iters, answer_rw_in, c.optimizer_max_tokens)
    p.add("examples", n_icl * c.icl_iters * j, judge_in, c.judge_max_tokens)
    # Library stage: per round the batch under the current library, then per proposal an edit
    # (plus one retry) and the batch under the edited library; finally both libraries on val.
    if c.library_rounds and n_train:
        edit_in = _tok(text.LIBRARY_EDIT_SYSTEM + text.LIBRARY_EDIT_USER) + answer_tok + c.k * example_tok
        p.add("library", c.library_rounds * b * (1 + c.library_edits), target_in, answer_tok)
        p.add("library", c.library_rounds * c.library_edits * 2, edit_in, c.optimizer_max_tokens)
        p.add("library", 2 * n_val, target_in, answer_tok)
    # Stage 2: the root's batch, then per level up to beam*actions chains of rewrite → batch answers →
    # judge, plus each state's own answers on the level's batch (the safety gate's baseline).
    levels = min(c.depth, max(0, -(-n_train // max(1, b)) - 1)) if b else 0
    chains = 0
    if levels:
        chains = c.actions + (levels - 1) * c.beam * c.actions
    p.add("beam", (1 + chains) * b + levels * min(c.beam, 1 + chains) * b, target_in, answer_tok)
    p.add("beam", (1 + chains) * b * j, judge_in, c.judge_max_tokens)
    p.add("beam", chains, rewrite_in, c.optimizer_max_tokens)
    # Validation: final beam + the initial prompt on every held-out query.
    n_cand = min(c.beam, max(1, chains)) + 1 if n_val else 0
    p.add("validation", n_cand * n_val, target_in, answer_tok)
    p.add("validation", n_cand * n_val * j, judge_in, c.judge_max_tokens)
    return p
