"""The library stage: optimize the example library *as retrieved*, with the target in the loop.

Stage 1 scores each example answer in isolation; this stage scores the library the way
the proxy serves it. Each round takes a mini-batch of labelled training queries and has
the target answer them under the current library (through :mod:`prompts.layout`, so the
examples it sees are the ones retrieval picks). If some answer is wrong (a harmful query
not refused, a harmless one refused, a refusal followed by compliance), the optimizer is
shown that case and the examples that were retrieved for it and proposes one edit:

- ``add`` a new example — its query in the optimizer's own words: a query whose word-set
  Jaccard similarity with any training or validation query is :data:`NEAR_DUPLICATE` or
  more is rejected, so no train query is copied into the library;
- ``rewrite`` an example's answer, ``relabel`` an example, or ``remove`` one.

Every new or changed answer must pass the quality floor (:mod:`optimizer.answer_checks`)
for its label; an edit that does not is sent back with the reason, and dropped if it still
fails. A valid edit is scored on the same batch and kept only if it improves the
alignment objective there without regressing any refusal metric
(:mod:`optimizer.multiobjective`). At the end the initial and the optimized library are
compared on the labelled validation queries with the same rule; the optimized one is used
only if it wins.

Progress is checkpointed after every proposal, so a run stopped by its budget resumes
where it stopped and reaches the same library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from optimizer import prompts_text as text
from optimizer.answer_checks import answer_problem, word_jaccard
from optimizer.data import Query
from optimizer.icl import ANSWER_MAX_CHARS, stable_seed
from optimizer.llm import Endpoint, LLMClient, run_all
from optimizer.multiobjective import Scored, beats, choose, is_aligned, rates
from optimizer.refusal import classify
from optimizer.target import Candidate, Target
from prompts.artifact import Example, ExampleLabel, RetrievalSettings

NEAR_DUPLICATE = 0.65
EXPECTED = {
    "harmful": "decline it (the request is harmful), briefly say why, and offer a safe alternative",
    "lookalike": "answer it helpfully (it only sounds risky; it is harmless)",
    "ordinary": "answer it helpfully (it is an everyday request)",
}
EditAction = Literal["add", "remove", "rewrite", "relabel"]


class Answered(BaseModel):
    """The target's answer to one labelled query under a library, classified without a judge."""

    query: str
    label: str | None
    answer: str
    refused: bool = False
    complied_after_refusal: bool = False

    @property
    def aligned(self) -> bool | None:
        return is_aligned(self.label, self.refused, self.complied_after_refusal)


class LibraryEdit(BaseModel):
    round: int
    proposal: int
    case: str = ""  # the failing query the edit was proposed for
    action: EditAction | None = None
    index: int = -1
    query: str = ""
    answer: str = ""
    label: ExampleLabel | None = None
    problem: str = ""  # why no valid edit came back (then it was not scored)
    accepted: bool = False
    why: str = ""
    batch_rates: dict[str, float | None] = Field(default_factory=dict)  # after the edit, on the round's batch


class LibraryProgress(BaseModel):
    """Everything needed to continue the stage; checkpointed after every proposal."""

    initial: list[Example]
    examples: list[Example]
    rounds_done: int = 0
    edits: list[LibraryEdit] = Field(default_factory=list)
    finished: bool = False
    val_initial: list[Answered] = Field(default_factory=list)
    val_optimized: list[Answered] = Field(default_factory=list)
    chosen: Literal["initial", "optimized"] | None = None
    decision: str = ""

    @property
    def library(self) -> tuple[Example, ...]:
        """The library the rest of the run uses (the optimized one only if it won on val)."""
        return tuple(self.examples if self.chosen == "optimized" else self.initial)


class _EditReply(BaseModel):
    action: EditAction
    index: int = -1
    query: str = ""
    answer: str = ""
    label: ExampleLabel | None = None


def edit_schema() -> dict[str, object]:
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["add", "rewrite", "relabel", "remove"]},
            "index": {"type": "integer"},
            "query": {"type": "string"},
            "answer": {"type": "string"},
            "label": {"type": "string", "enum": ["refusal", "helpful", "general"]},
        },
        "required": ["action", "index", "query", "answer", "label"],
        "additionalProperties": False,
    }


def near_duplicate(query: str, others: Sequence[str], threshold: float = NEAR_DUPLICATE) -> str | None:
    """The first of ``others`` the query is a near-copy of (word-set Jaccard ≥ threshold), or None."""
    return next((o for o in others if word_jaccard(query, o) >= threshold), None)


def edit_problem(reply: _EditReply, library: Sequence[Example], protected: Sequence[str]) -> str | None:
    """Why an edit cannot be applied, or None. The reason is the optimizer's retry instruction."""
    if reply.action == "add":
        query = reply.query.strip()
        if not query:
            return "an added example needs a query"
        if reply.label is None:
            return "an added example needs a label: refusal, helpful or general"
        if near_duplicate(query, protected) is not None:
            return "the new query copies a training query: write a different query in your own words"
        if any(e.query == query for e in library):
            return "the library already has an example with this query"
        return answer_problem(query, reply.answer.strip()[:ANSWER_MAX_CHARS], reply.label)
    if not 0 <= reply.index < len(library):
        return f"index must be the number of a shown example (0 to {len(library) - 1})"
    example = library[reply.index]
    if reply.action == "remove":
        return "the library cannot be left empty" if len(library) <= 1 else None
    if reply.action == "rewrite":
        return answer_problem(example.query, reply.answer.strip()[:ANSWER_MAX_CHARS], reply.label or example.label)
    if reply.label is None or reply.label == example.label:
        return "a relabel needs a different label"
    # The answer must fit its new label (a "refusal" example has to refuse, and so on).
    return answer_problem(example.query, example.answer, reply.label)


def apply_edit(reply: _EditReply, library: Sequence[Example]) -> list[Example]:
    out = list(library)
    if reply.action == "add":
        out.append(
            Example(query=reply.query.strip(), answer=reply.answer.strip()[:ANSWER_MAX_CHARS], label=reply.label)
        )
    elif reply.action == "remove":
        del out[reply.index]
    elif reply.action == "rewrite":
        old = out[reply.index]
        out[reply.index] = Example(
            query=old.query, answer=reply.answer.strip()[:ANSWER_MAX_CHARS], label=reply.label or old.label
        )
    else:
        out[reply.index] = out[reply.index].model_copy(update={"label": reply.label})
    return out


def improves(after: Sequence[Answered], before: Sequence[Answered]) -> tuple[bool, str]:
    """Keep an edit only if the batch objective rises and no refusal metric gets worse."""
    return beats(Scored("edit", after), Scored("current", before))


class LibraryStage:
    def __init__(
        self,
        llm: LLMClient,
        target: Target,
        optimizer: Endpoint,
        system_prompt: str,
        retrieval: RetrievalSettings,
        train: Sequence[Query],
        val: Sequence[Query],
        *,
        rounds: int,
        edits_per_round: int,
        batch_size: int,
        temperature: float,
        max_tokens: int,
        seed: int,
        margin: float,
        checkpoint: Callable[[LibraryProgress], None],
    ) -> None:
        self.llm = llm
        self.target = target
        self.optimizer = optimizer
        self.system_prompt = system_prompt
        self.retrieval = retrieval
        self.train = [q for q in train if q.label is not None]
        self.val = [q for q in val if q.label is not None]
        # No library query may be a near-copy of a query we train or select on.
        self.protected = [q.text for q in (*train, *val)]
        self.rounds = rounds
        self.edits_per_round = edits_per_round
        self.batch_size = max(1, batch_size)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.margin = margin
        self.checkpoint = checkpoint

    def candidate(self, library: Sequence[Example]) -> Candidate:
        return Candidate(self.system_prompt, tuple(library), self.retrieval)

    def batch(self, round_: int) -> list[Query]:
        n = len(self.train)
        size = min(self.batch_size, n)
        return [self.train[(round_ * size + i) % n] for i in range(size)]

    async def answer_all(self, library: Sequence[Example], queries: Sequence[Query]) -> list[Answered]:
        candidate = self.candidate(library)

        async def one(query: Query) -> Answered:
            answer = await self.target.answer(candidate, query.text)
            verdict = classify(answer)
            return Answered(
                query=query.text,
                label=query.label,
                answer=answer,
                refused=verdict.refused,
                complied_after_refusal=verdict.complied_after_refusal,
            )

        return await run_all([one(q) for q in queries])

    async def run(self, initial: Sequence[Example], progress: LibraryProgress | None) -> LibraryProgress:
        if progress is None:
            progress = LibraryProgress(initial=list(initial), examples=list(initial))
            self.checkpoint(progress)
        if not self.train or not progress.initial:
            progress.rounds_done = max(progress.rounds_done, self.rounds)
        while progress.rounds_done < self.rounds:
            await self._round(progress)
            progress.rounds_done += 1
            self.checkpoint(progress)
        if not progress.finished:
            await self._select(progress)
            progress.finished = True
            self.checkpoint(progress)
        return progress

    async def _round(self, progress: LibraryProgress) -> None:
        r = progress.rounds_done
        done = [e for e in progress.edits if e.round == r]
        if any(e.accepted for e in done):
            return  # stopped right after this round's edit was kept
        queries = self.batch(r)
        before = await self.answer_all(progress.examples, queries)
        failing = [a for a in before if a.aligned is False]
        if not failing:
            return
        for p in range(len(done), self.edits_per_round):
            case = failing[p % len(failing)]
            edit = await self._propose(progress.examples, case, r, p)
            if edit.action is not None and not edit.problem:
                reply = _EditReply.model_validate(
                    edit.model_dump(include={"action", "index", "query", "answer", "label"})
                )
                changed = apply_edit(reply, progress.examples)
                after = await self.answer_all(changed, queries)
                edit.accepted, edit.why = improves(after, before)
                edit.batch_rates = rates(after)
                if edit.accepted:
                    progress.examples = changed
            progress.edits.append(edit)
            self.checkpoint(progress)
            if edit.accepted:
                return

    def _shown(self, library: Sequence[Example], query: str) -> str:
        prepared = self.target.prepare(self.candidate(library))
        shown = prepared.select_examples(query)
        lines = []
        for i, example in enumerate(library):
            if example in shown:
                answer = " ".join(example.answer.split())[:300]
                lines.append(f"[{i}] label={example.label or 'none'}\n  query: {example.query}\n  answer: {answer}")
        return "\n".join(lines) if lines else text.NO_EXAMPLES_SHOWN

    async def _propose(self, library: Sequence[Example], case: Answered, round_: int, proposal: int) -> LibraryEdit:
        messages = [
            {"role": "system", "content": text.LIBRARY_EDIT_SYSTEM},
            {
                "role": "user",
                "content": text.LIBRARY_EDIT_USER.format(
                    query=case.query,
                    expected=EXPECTED.get(case.label or "", "answer it well"),
                    answer=case.answer or "(empty)",
                    shown=self._shown(library, case.query),
                ),
            },
        ]
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": stable_seed(self.seed, "library", round_, proposal),
        }

        def usable(reply: _EditReply) -> str | None:
            return edit_problem(reply, library, self.protected)

        parsed = await self.llm.structured(
            self.optimizer, messages, "library_edit", edit_schema(), _EditReply, params, usable
        )
        edit = LibraryEdit(round=round_, proposal=proposal, case=case.query)
        if parsed.value is None:
            edit.problem = parsed.error or "no usable edit"
            return edit
        reply = parsed.value
        return edit.model_copy(
            update={
                "action": reply.action,
                "index": reply.index,
                "query": reply.query.strip(),
                "answer": reply.answer.strip()[:ANSWER_MAX_CHARS],
                "label": reply.label,
            }
        )

    async def _select(self, progress: LibraryProgress) -> None:
        if progress.examples == progress.initial:
            progress.chosen, progress.decision = "initial", "no edit was kept"
            return
        if not self.val:
            progress.chosen, progress.decision = "initial", "no labelled validation queries to confirm the edits"
            return
        if not progress.val_initial:
            progress.val_initial = await self.answer_all(progress.initial, self.val)
            self.checkpoint(progress)
        if not progress.val_optimized:
            progress.val_optimized = await self.answer_all(progress.examples, self.val)
            self.checkpoint(progress)
        baseline = Scored("initial", progress.val_initial)
        winner, reasons = choose(baseline, [Scored("optimized", progress.val_optimized)], self.margin)
        progress.chosen = "optimized" if winner.name == "optimized" else "initial"
        progress.decision = reasons.get("optimized", "")
