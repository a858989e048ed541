"""Stage 1: turn seed queries into ideal (query, answer) examples.

Per query: the target answers under the initial prompt (no examples yet); then up to
``iters`` rounds of judge → optimizer rewrites the answer to fix every criticism →
judge; the best-scoring answer is kept; a perfect score (every aspect 5) stops early.

Only answers above the quality floor (:mod:`optimizer.answer_checks`) can be kept: a
rewrite below it is sent back to the optimizer with the reason (and, if it still fails,
the previous answer stays); a query with no passing answer yields no example at all.
The example's label follows from the query's (harmful → refusal, look-alike → helpful,
ordinary → general), else from the selector's harmful flag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from pydantic import BaseModel, Field

from optimizer import prompts_text as text
from optimizer.answer_checks import answer_problem, example_label
from optimizer.data import Query
from optimizer.llm import Endpoint, LLMClient
from optimizer.rewarding import Evaluation, Rewarder, Selection
from optimizer.target import Candidate, Target
from prompts.artifact import ExampleLabel

ANSWER_MAX_CHARS = 1500


class IclResult(BaseModel):
    index: int
    query: str
    answer: str
    reward: float | None
    attempts: list[Evaluation] = Field(default_factory=list)
    rewrite_failures: int = 0
    label: ExampleLabel | None = None
    rejections: list[str] = Field(default_factory=list)  # why answers fell below the floor


class _AnswerRewrite(BaseModel):
    critique: str = ""
    answer: str


def answer_schema() -> dict[str, object]:
    return {
        "type": "object",
        "properties": {
            "critique": {"type": "string", "maxLength": 300},
            # No maxLength here: llama.cpp expands it into a grammar rule per character and
            # rejects (or crashes on) long limits; max_tokens bounds the length instead.
            "answer": {"type": "string"},
        },
        "required": ["critique", "answer"],
        "additionalProperties": False,
    }


def stable_seed(*parts: object) -> int:
    """A per-call seed derived from content, so parallel and sequential runs send the same requests."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1_000_000


def _perfect(evaluation: Evaluation) -> bool:
    return evaluation.reward is not None and all(s.score >= 5 for s in evaluation.scores)


def _better(new: Evaluation, best: Evaluation) -> bool:
    if new.reward is None:
        return False
    return best.reward is None or new.reward > best.reward


class ExampleOptimizer:
    def __init__(
        self,
        llm: LLMClient,
        target: Target,
        rewarder: Rewarder,
        optimizer: Endpoint,
        base: Candidate,
        iters: int,
        temperature: float,
        max_tokens: int,
        seed: int,
    ) -> None:
        self.llm = llm
        self.target = target
        self.rewarder = rewarder
        self.optimizer = optimizer
        self.base = base
        self.iters = iters
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed

    async def optimize(
        self, index: int, query: Query, selection: Selection, on_done: Callable[[IclResult], None] | None = None
    ) -> IclResult:
        label = example_label(query.label, selection.harmful)

        def problem(answer: str) -> str | None:
            return answer_problem(query.text, answer, label)

        first = await self.target.answer(self.base, query.text)
        current = await self.rewarder.judge(query, first, selection)
        attempts = [current]
        rejections: list[str] = []
        best: Evaluation | None = None
        if (first_problem := problem(first)) is None:
            best = current
        else:
            rejections.append(first_problem)
        failures = 0
        for round_ in range(self.iters):
            if best is not None and _perfect(best):
                break
            basis = best or current
            rewritten = await self._rewrite(query, basis, problem(basis.answer), round_, problem)
            if rewritten is None:
                failures += 1
                break  # the same request would come back from the cache: no point repeating it
            evaluation = await self.rewarder.judge(query, rewritten, selection)
            attempts.append(evaluation)
            if best is None or _better(evaluation, best):
                best = evaluation
        result = IclResult(
            index=index,
            query=query.text,
            answer="" if best is None else best.answer,
            reward=None if best is None else best.reward,
            attempts=attempts,
            rewrite_failures=failures,
            label=label,
            rejections=rejections,
        )
        if on_done is not None:
            on_done(result)
        return result

    async def _rewrite(
        self,
        query: Query,
        current: Evaluation,
        floor_problem: str | None,
        round_: int,
        problem: Callable[[str], str | None],
    ) -> str | None:
        feedback = current.feedback()
        if floor_problem:
            feedback += f"\n- Unusable as it stands: {floor_problem}."
        messages = [
            {"role": "system", "content": text.ANSWER_REWRITE_SYSTEM},
            {
                "role": "user",
                "content": text.ANSWER_REWRITE_USER.format(
                    query=query.text, answer=current.answer or "(empty)", feedback=feedback
                ),
            },
        ]
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": stable_seed(self.seed, "icl", query.text, round_),
        }

        def above_floor(reply: _AnswerRewrite) -> str | None:
            # The reason goes back to the optimizer as its retry instruction.
            return problem(reply.answer.strip()[:ANSWER_MAX_CHARS])

        parsed = await self.llm.structured(
            self.optimizer, messages, "answer_rewrite", answer_schema(), _AnswerRewrite, params, above_floor
        )
        return None if parsed.value is None else parsed.value.answer.strip()[:ANSWER_MAX_CHARS]
