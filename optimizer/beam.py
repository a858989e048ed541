"""Stage 2: beam search over system prompts (docs/architecture.md, "The optimizer's algorithm").

Level ``t`` uses training query ``t``. Every state in the beam has already been
evaluated on it (answer under its prompt + retrieved examples, judged); that evaluation
is the feedback for expansion. Each state gets ``actions`` rewrites from the optimizer
(or, if its answer was already excellent, one unchanged "skip" child); every child is
evaluated on query ``t+1``, which is its step reward. The ``beam`` children with the
best mean reward along their path survive. A level where every state skipped does not
count towards ``depth`` (at most ``max_depth_increase`` times).

Children are built and scored concurrently but collected in a fixed order, and ties
break by that order, so the search is identical at any concurrency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from optimizer import prompts_text as text
from optimizer.data import Query
from optimizer.icl import stable_seed
from optimizer.llm import Endpoint, LLMClient, run_all
from optimizer.rewarding import Evaluation, Rewarder, Selection
from optimizer.target import Candidate, Target
from prompts.artifact import Example, RetrievalSettings

MAX_BULLETS = 8
PROMPT_MAX_CHARS = 2000
HISTORY_LENGTH = 3

Action = Literal["initial", "rewrite", "skip", "carry"]


class Node(BaseModel):
    id: str
    parent: str | None
    level: int  # index of the training query this node was evaluated on
    action: Action
    prompt: str
    diagnosis: str = ""
    evaluation: Evaluation
    path_rewards: list[float | None]

    @property
    def mean_reward(self) -> float | None:
        known = [r for r in self.path_rewards if r is not None]
        return sum(known) / len(known) if known else None


class BeamProgress(BaseModel):
    """Everything needed to continue the search; checkpointed after every level."""

    nodes: dict[str, Node] = Field(default_factory=dict)
    beam: list[str] = Field(default_factory=list)
    level: int = 0
    levels_done: int = 0
    extensions: int = 0
    rewrite_failures: list[dict[str, object]] = Field(default_factory=list)
    finished: bool = False
    stop_reason: str = ""


@dataclass(frozen=True)
class BeamSettings:
    beam: int = 2
    actions: int = 3
    depth: int = 20
    max_depth_increase: int = 10
    temperature: float = 0.2
    max_tokens: int = 320
    seed: int = 0


class _PromptRewrite(BaseModel):
    diagnosis: str = ""
    system_prompt: str


def rewrite_schema() -> dict[str, object]:
    return {
        "type": "object",
        "properties": {
            "diagnosis": {"type": "string", "maxLength": 300},
            "system_prompt": {"type": "string"},  # long maxLength breaks llama.cpp grammars
        },
        "required": ["diagnosis", "system_prompt"],
        "additionalProperties": False,
    }


def tidy_prompt(prompt: str) -> str:
    """Enforce the structural constraints we asked for: at most 8 bullets, bounded length."""
    lines = [line.rstrip() for line in prompt.strip().splitlines()]
    out, bullets = [], 0
    for line in lines:
        if line.lstrip().startswith(("- ", "* ", "• ")):
            bullets += 1
            if bullets > MAX_BULLETS:
                continue
        out.append(line)
    return "\n".join(out).strip()[:PROMPT_MAX_CHARS]


MIN_PROMPT_CHARS = 80


def rewrite_problem(prompt: str) -> str | None:
    """Why a proposed system prompt is unusable, or None.

    Small optimizer models sometimes echo the reply template ("the full new system prompt")
    or a fragment instead of a prompt; such a reply may still score well on a weak judge, so
    it is rejected (and retried) rather than entered into the beam.
    """
    tidy = tidy_prompt(prompt)
    if not tidy:
        return "the system prompt is empty"
    if len(tidy) < MIN_PROMPT_CHARS:
        return f"the system prompt is only {len(tidy)} characters: write the complete new system prompt itself"
    return None


def rank_key(order: int, node: Node) -> tuple[int, float, int]:
    mean = node.mean_reward
    # Unscored nodes (every judge call failed) rank after scored ones; they never count as 0.
    return (1, 0.0, order) if mean is None else (0, -mean, order)


@dataclass(frozen=True)
class _ChildSpec:
    parent: Node
    order: int
    action: Action
    action_index: int


class BeamSearch:
    def __init__(
        self,
        llm: LLMClient,
        target: Target,
        rewarder: Rewarder,
        optimizer: Endpoint,
        examples: Sequence[Example],
        retrieval: RetrievalSettings,
        settings: BeamSettings,
        train: Sequence[Query],
        selections: dict[str, Selection],
        checkpoint: Callable[[BeamProgress], None],
    ) -> None:
        self.llm = llm
        self.target = target
        self.rewarder = rewarder
        self.optimizer = optimizer
        self.examples = tuple(examples)
        self.retrieval = retrieval
        self.settings = settings
        self.train = list(train)
        self.selections = selections
        self.checkpoint = checkpoint
        self.on_level: Callable[[BeamProgress], None] | None = None

    def candidate(self, prompt: str) -> Candidate:
        return Candidate(prompt, self.examples, self.retrieval)

    async def evaluate(self, prompt: str, query: Query) -> Evaluation:
        answer = await self.target.answer(self.candidate(prompt), query.text)
        return await self.rewarder.judge(query, answer, self.selections[query.text])

    async def run(self, initial_prompt: str, progress: BeamProgress | None) -> BeamProgress:
        if progress is None:
            evaluation = await self.evaluate(initial_prompt, self.train[0])
            root = Node(
                id="n0-0",
                parent=None,
                level=0,
                action="initial",
                prompt=initial_prompt,
                evaluation=evaluation,
                path_rewards=[evaluation.reward],
            )
            progress = BeamProgress(nodes={root.id: root}, beam=[root.id])
            self.checkpoint(progress)
        while not progress.finished:
            if progress.levels_done >= self.settings.depth + progress.extensions:
                progress.finished, progress.stop_reason = True, "depth reached"
            elif progress.level + 1 >= len(self.train):
                progress.finished, progress.stop_reason = True, "training queries used up"
            else:
                await self._level(progress)
            self.checkpoint(progress)
            if self.on_level is not None:
                self.on_level(progress)
        return progress

    async def _level(self, progress: BeamProgress) -> None:
        level = progress.level + 1
        query = self.train[level]
        states = [progress.nodes[i] for i in progress.beam]
        specs: list[_ChildSpec] = []
        for state in states:
            if state.evaluation.excellent:
                specs.append(_ChildSpec(state, len(specs), "skip", 0))
            else:
                specs.extend(_ChildSpec(state, len(specs), "rewrite", a) for a in range(self.settings.actions))
        all_skipped = all(s.action == "skip" for s in specs)
        built = await run_all([self._child(spec, level, query, progress) for spec in specs])
        children = [c for c in built if c is not None]
        progress.rewrite_failures.sort(key=lambda f: (str(f["level"]), str(f["parent"]), str(f["action"])))
        # A state whose every rewrite failed still continues, unchanged, so the beam never empties.
        orphans = [s for s in states if not any(c.parent == s.id for c in children)]
        carried = await run_all(
            [
                self._child(_ChildSpec(s, len(specs) + n, "carry", 0), level, query, progress)
                for n, s in enumerate(orphans)
            ]
        )
        children.extend(c for c in carried if c is not None)
        unique: dict[str, Node] = {}
        for child in children:
            unique.setdefault(child.prompt, child)
        ordered = list(unique.values())
        ranked = sorted(enumerate(ordered), key=lambda pair: rank_key(pair[0], pair[1]))
        for child in ordered:
            progress.nodes[child.id] = child
        progress.beam = [node.id for _, node in ranked[: self.settings.beam]]
        progress.level = level
        progress.levels_done += 1
        if all_skipped and progress.extensions < self.settings.max_depth_increase:
            progress.extensions += 1

    async def _child(self, spec: _ChildSpec, level: int, query: Query, progress: BeamProgress) -> Node | None:
        parent = spec.parent
        prompt, diagnosis = parent.prompt, ""
        if spec.action == "rewrite":
            rewritten = await self._rewrite(parent, spec.action_index, progress)
            if rewritten is None:
                progress.rewrite_failures.append({"parent": parent.id, "level": level, "action": spec.action_index})
                return None
            prompt, diagnosis = rewritten
        evaluation = await self.evaluate(prompt, query)
        return Node(
            id=f"n{level}-{spec.order}",
            parent=parent.id,
            level=level,
            action=spec.action,
            prompt=prompt,
            diagnosis=diagnosis,
            evaluation=evaluation,
            path_rewards=[*parent.path_rewards, evaluation.reward],
        )

    def _history(self, node: Node, progress: BeamProgress) -> list[str]:
        prompts: list[str] = []
        current = node.parent
        while current is not None and len(prompts) < HISTORY_LENGTH:
            ancestor = progress.nodes[current]
            if ancestor.prompt != node.prompt and ancestor.prompt not in prompts:
                prompts.append(ancestor.prompt)
            current = ancestor.parent
        return list(reversed(prompts))

    async def _rewrite(self, parent: Node, action_index: int, progress: BeamProgress) -> tuple[str, str] | None:
        history = self._history(parent, progress)
        evaluation = parent.evaluation
        messages = [
            {"role": "system", "content": text.PROMPT_REWRITE_SYSTEM},
            {
                "role": "user",
                "content": text.PROMPT_REWRITE_USER.format(
                    prompt=parent.prompt,
                    history="\n---\n".join(history) if history else text.NO_HISTORY,
                    query=evaluation.query,
                    answer=evaluation.answer or "(empty)",
                    feedback=evaluation.feedback(),
                ),
            },
        ]
        params = {
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "seed": stable_seed(self.settings.seed, parent.id, action_index),
        }

        def usable(reply: _PromptRewrite) -> str | None:
            return rewrite_problem(reply.system_prompt)

        parsed = await self.llm.structured(
            self.optimizer, messages, "prompt_rewrite", rewrite_schema(), _PromptRewrite, params, usable
        )
        if parsed.value is None:
            return None
        return tidy_prompt(parsed.value.system_prompt), parsed.value.diagnosis.strip()
