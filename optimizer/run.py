"""One optimization run, start to finish (or to a clean stop), resumable.

Order: aspect selection for every query → Stage 1 (examples, each above the quality
floor) → the library stage (edits to the library as retrieved, kept on train, confirmed
on val) → Stage 2 (beam search on mini-batches) → validation of the final beam against
the initial prompt on labelled val queries (multi-objective: no refusal metric may get
worse) → a new artifact version in the store, its val metrics in the provenance. The run
state is checkpointed after every example, library proposal, beam level and validation
candidate; on resume finished work is read back, never recomputed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from optimizer.beam import BeamProgress, BeamSearch, BeamSettings, Node
from optimizer.checkpoint import RunDir, RunState, ValidationResult
from optimizer.config import OptimizeConfig
from optimizer.data import Query, split_queries
from optimizer.errors import BudgetExceeded, RunStateError
from optimizer.estimate import project
from optimizer.icl import ExampleOptimizer, IclResult
from optimizer.library import LibraryProgress, LibraryStage
from optimizer.llm import Budget, Counters, Endpoint, LLMCache, LLMClient, Transport, run_all
from optimizer.multiobjective import Scored, choose, report
from optimizer.progress import ProgressView, summary_table
from optimizer.rewarding import Rewarder
from optimizer.target import Candidate, Target
from prompts.artifact import Artifact, Example, Provenance, RetrievalSettings
from prompts.store import open_store_at

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roles:
    target: Endpoint
    selector: Endpoint
    judge: Endpoint
    optimizer: Endpoint

    def describe(self) -> dict[str, dict[str, str]]:
        return {
            e.role: {"url": e.cache_identity, "model": e.model, "json_dialect": e.dialect}
            for e in (self.target, self.selector, self.judge, self.optimizer)
        }


@dataclass(frozen=True)
class Paths:
    runs_dir: Path
    cache_dir: Path
    store_dir: Path
    registry_url: str | None = None  # the shared registry the store mirrors, if any


@dataclass
class RunOutcome:
    state: RunState
    artifact: Artifact | None
    counters: Counters
    run_dir: Path
    elapsed: float

    @property
    def stopped(self) -> bool:
        return self.state.status == "stopped"


def cap_validation(val: Sequence[Query], size: int) -> list[Query]:
    """At most ``size`` queries, labels taken in turn (set order within a label), so every label stays in."""
    if size <= 0 or len(val) <= size:
        return list(val)
    groups: dict[str | None, list[Query]] = {}
    for q in val:
        groups.setdefault(q.label, []).append(q)
    picked: list[Query] = []
    while len(picked) < size:
        for group in groups.values():
            if group and len(picked) < size:
                picked.append(group.pop(0))
    chosen = {q.text for q in picked}
    return [q for q in val if q.text in chosen]


def initial_state(
    run_id: str,
    config: OptimizeConfig,
    queries: Sequence[Query],
    icl: Sequence[Query],
    val: Sequence[Query] | None = None,
) -> RunState:
    """The run's queries: ``val`` when a validation set is named (capped at ``val_size``), else split off."""
    if val is None:
        train, val = split_queries(list(queries), config.val_size, config.seed)
    else:
        val = cap_validation(val, config.val_size)
        held_out = {q.text for q in val}
        train, _ = split_queries([q for q in queries if q.text not in held_out], 0, config.seed)
    return RunState(
        run_id=run_id,
        config=config.model_dump(mode="json"),
        queries={
            "train": [q.as_dict() for q in train],
            "validation": [q.as_dict() for q in val],
            "icl": [q.as_dict() for q in list(icl)[: config.icl_queries]],
        },
    )


class Optimization:
    def __init__(
        self,
        state: RunState,
        config: OptimizeConfig,
        roles: Roles,
        transport: Transport,
        paths: Paths,
        console: Console | None = None,
        activate: bool = False,
    ) -> None:
        self.state = state
        self.config = config
        self.roles = roles
        self.paths = paths
        self.activate = activate
        self.console = console
        self.run_dir = RunDir(paths.runs_dir, state.run_id)
        self.cache = LLMCache(paths.cache_dir)
        self.llm = LLMClient(
            transport, self.cache, Budget(config.max_calls, config.max_tokens), concurrency=config.concurrency
        )
        self.target = Target(self.llm, roles.target, config.layout, config.target_max_tokens)
        self.rewarder = Rewarder(
            self.llm,
            roles.selector,
            roles.judge,
            config.judge_samples,
            config.selector_max_tokens,
            config.judge_max_tokens,
        )
        self.train = [Query.from_dict(q) for q in state.queries["train"]]
        self.val = [Query.from_dict(q) for q in state.queries["validation"]]
        self.icl = [Query.from_dict(q) for q in state.queries["icl"]]
        self.retrieval = RetrievalSettings(k=config.k)
        projection = project(config, len(self.train), len(self.val), len(self.icl))
        self.view = ProgressView(console, self.llm.counters, projection.total_calls)
        self.llm.on_call = self.view.refresh

    def save(self) -> None:
        self.run_dir.save(self.state)

    async def run(self) -> RunOutcome:
        started = time.monotonic()
        self.state.status, self.state.stop_reason = "running", ""
        self.save()
        artifact: Artifact | None = None
        try:
            with self.view:
                await self._select_aspects()
                examples = await self._stage_library(await self._stage_examples())
                beam = await self._stage_beam(examples)
                await self._validate(beam, examples)
                artifact = self._publish(examples)
            self.state.status = "done"
        except BudgetExceeded as exc:
            self.state.status, self.state.stop_reason = "stopped", str(exc)
            logger.info("budget used up; run %s can be resumed", self.state.run_id)
        except BaseException as exc:
            self.state.status, self.state.stop_reason = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.state.sessions.append(
                {**self.llm.counters.as_dict(), "elapsed_s": round(time.monotonic() - started, 3)}
            )
            self.save()
            self.run_dir.write_trace(self.state)
            await self.llm.transport.aclose()
            self.cache.close()
        return RunOutcome(self.state, artifact, self.llm.counters, self.run_dir.path, time.monotonic() - started)

    # -- stages --------------------------------------------------------------------------------------

    async def _select_aspects(self) -> None:
        levels = self.config.depth + self.config.max_depth_increase + 1
        visited = self.train[: levels * self.config.batch_size]
        pending = [q for q in [*self.icl, *visited, *self.val] if q.text not in self.state.selections]
        unique = list({q.text: q for q in pending}.values())
        self.view.update(stage="aspects", position=f"{len(unique)} queries")
        selections = await run_all([self.rewarder.select(q) for q in unique])
        for query, selection in zip(unique, selections, strict=True):
            self.state.selections[query.text] = selection
        self.save()

    def _base_candidate(self) -> Candidate:
        return Candidate(self.config.initial_prompt, (), self.retrieval)

    async def _stage_examples(self) -> tuple[Example, ...]:
        worker = ExampleOptimizer(
            self.llm,
            self.target,
            self.rewarder,
            self.roles.optimizer,
            self._base_candidate(),
            self.config.icl_iters,
            self.config.optimizer_temperature,
            self.config.optimizer_max_tokens,
            self.config.seed,
        )

        def done(result: IclResult) -> None:
            self.state.icl[result.index] = result
            self.save()
            self.view.update(position=f"example {len(self.state.icl)}/{len(self.icl)}")

        todo = [(i, q) for i, q in enumerate(self.icl) if i not in self.state.icl]
        self.view.update(stage="stage 1: examples", position=f"example {len(self.state.icl)}/{len(self.icl)}")
        await run_all([worker.optimize(i, q, self.state.selections[q.text], done) for i, q in todo])
        results = [self.state.icl[i] for i in sorted(self.state.icl)]
        return tuple(Example(query=r.query, answer=r.answer, label=r.label) for r in results if r.answer.strip())

    async def _stage_library(self, examples: tuple[Example, ...]) -> tuple[Example, ...]:
        c = self.config
        # A run checkpointed before this stage existed searched its beam with Stage 1's library: keep it.
        if self.state.library is None and (c.library_rounds == 0 or self.state.beam is not None):
            return examples
        stage = LibraryStage(
            self.llm,
            self.target,
            self.roles.optimizer,
            c.initial_prompt,
            self.retrieval,
            self.train,
            self.val,
            rounds=c.library_rounds,
            edits_per_round=c.library_edits,
            batch_size=c.batch_size,
            temperature=c.optimizer_temperature,
            max_tokens=c.optimizer_max_tokens,
            seed=c.seed,
            margin=c.refusal_margin,
            checkpoint=self._checkpoint_library,
        )

        def position(progress: LibraryProgress) -> str:
            kept = sum(1 for e in progress.edits if e.accepted)
            return f"round {progress.rounds_done}/{c.library_rounds}, {kept} edits kept"

        self.view.update(stage="library stage", position=position(self.state.library) if self.state.library else "")
        progress = await stage.run(examples, self.state.library)
        return progress.library

    def _checkpoint_library(self, progress: LibraryProgress) -> None:
        self.state.library = progress
        self.save()
        kept = sum(1 for e in progress.edits if e.accepted)
        self.view.update(position=f"round {progress.rounds_done}/{self.config.library_rounds}, {kept} edits kept")

    async def _stage_beam(self, examples: tuple[Example, ...]) -> BeamProgress:
        c = self.config
        settings = BeamSettings(
            c.beam,
            c.actions,
            c.depth,
            c.max_depth_increase,
            c.optimizer_temperature,
            c.optimizer_max_tokens,
            c.seed,
            c.batch_size,
        )
        search = BeamSearch(
            self.llm,
            self.target,
            self.rewarder,
            self.roles.optimizer,
            examples,
            self.retrieval,
            settings,
            self.train,
            self.state.selections,
            self._checkpoint_beam,
        )
        search.on_level = self._show_level
        self.view.update(stage="stage 2: beam search", position="root")
        if self.state.beam is not None:
            self._show_level(self.state.beam)
        return await search.run(c.initial_prompt, self.state.beam)

    def _checkpoint_beam(self, progress: BeamProgress) -> None:
        self.state.beam = progress
        self.save()
        self.run_dir.write_trace(self.state)

    def _show_level(self, progress: BeamProgress) -> None:
        best = progress.nodes[progress.beam[0]].mean_reward if progress.beam else None
        limit = self.config.depth + progress.extensions
        self.view.update(position=f"level {progress.levels_done}/{limit}", best=best)

    async def _validate(self, beam: BeamProgress, examples: tuple[Example, ...]) -> None:
        candidates: list[Node] = [beam.nodes[i] for i in beam.beam]
        root = beam.nodes["n0-0"]
        if all(n.prompt != root.prompt for n in candidates):
            candidates.append(root)
        self.view.update(stage="validation", position=f"{len(candidates)} candidates x {len(self.val)} queries")

        async def score(node: Node) -> None:
            if node.id in self.state.validation:
                return
            candidate = Candidate(node.prompt, examples, self.retrieval)

            async def one(query: Query) -> Any:
                answer = await self.target.answer(candidate, query.text)
                return await self.rewarder.judge(query, answer, self.state.selections[query.text])

            evaluations = await run_all([one(q) for q in self.val])
            rewards = [e.reward for e in evaluations if e.reward is not None]
            self.state.validation[node.id] = ValidationResult(
                node_id=node.id,
                prompt=node.prompt,
                train_reward=node.mean_reward,
                evaluations=evaluations,
                score=sum(rewards) / len(rewards) if rewards else None,
                excluded=len(evaluations) - len(rewards),
            )
            self.save()

        await run_all([score(n) for n in candidates])
        # The initial prompt stays unless a candidate beats it on val: no refusal metric worse
        # (within the margin) and a better alignment objective, or, on a tie, a better judge score.
        scored = [self._scored(n.id) for n in candidates]
        # The initial prompt is the root, or a beam node that kept it unchanged.
        baseline = next(s for s, n in zip(scored, candidates, strict=True) if n.prompt == root.prompt)
        winner, reasons = choose(baseline, scored, self.config.refusal_margin)
        self.state.chosen = next(n.id for n in candidates if n.id == winner.name)
        self.state.choice_reasons = reasons
        self.save()

    def _scored(self, node_id: str) -> Scored:
        v = self.state.validation[node_id]
        return Scored(node_id, v.evaluations, v.score)

    def _publish(self, examples: tuple[Example, ...]) -> Artifact:
        beam = self.state.beam
        if beam is None or self.state.chosen is None:
            raise RunStateError("nothing to publish: the search has not finished")
        chosen = beam.nodes[self.state.chosen]
        chosen_val = self.state.validation.get(chosen.id)
        initial_val = next((v for v in self.state.validation.values() if v.prompt == self.config.initial_prompt), None)
        scores: dict[str, float] = {}
        if chosen_val is not None and chosen_val.score is not None:
            scores["validation"] = round(chosen_val.score, 4)
        if chosen.mean_reward is not None:
            scores["train"] = round(chosen.mean_reward, 4)
        if initial_val is not None and initial_val.score is not None:
            scores["initial_validation"] = round(initial_val.score, 4)
        val_metrics: dict[str, Any] = {}
        if chosen_val is not None:
            for name, value in Scored(chosen.id, chosen_val.evaluations).rates.items():
                if value is not None:
                    scores[f"val_{name}"] = round(value, 4)
            val_metrics["chosen"] = report(chosen_val.evaluations, self.config.seed)
        if initial_val is not None:
            val_metrics["initial"] = report(initial_val.evaluations, self.config.seed)
        library = self.state.library
        with open_store_at(self.paths.store_dir, self.paths.registry_url) as store:
            parent = store.active_version(self.config.model)
            artifact = Artifact(
                model=self.config.model,
                system_prompt=chosen.prompt,
                examples=examples,
                retrieval=self.retrieval,
                layout=self.config.layout,
                provenance=Provenance(
                    method="optimize",
                    parent_version=parent,
                    scores=scores,
                    details={
                        "run_id": self.state.run_id,
                        "chosen_node": chosen.id,
                        "settings": self.state.config,
                        "roles": self.roles.describe(),
                        "validation_queries": len(self.val),
                        "val_source": self.config.val_source or "split from the training queries",
                        "val_metrics": val_metrics,
                        "choice": self.state.choice_reasons,
                        "library_stage": None
                        if library is None
                        else {
                            "chosen": library.chosen,
                            "decision": library.decision,
                            "edits_kept": sum(1 for e in library.edits if e.accepted),
                            "edits_tried": len(library.edits),
                            "val_initial": report(library.val_initial, self.config.seed),
                            "val_optimized": report(library.val_optimized, self.config.seed),
                        },
                        "batch_size": self.config.batch_size,
                        "beam_levels": beam.levels_done,
                        "stop_reason": beam.stop_reason,
                        "parse_failures": sum(s.get("parse_failures", 0) for s in self.state.sessions)
                        + self.llm.counters.parse_failures,
                    },
                ),
            )
            store.put(artifact, activate=self.activate)
        self.state.artifact_version = artifact.version
        return artifact


def summary_rows(outcome: RunOutcome, activated: bool) -> list[tuple[str, Any]]:
    state, c = outcome.state, outcome.counters
    rows: list[tuple[str, Any]] = [("run id", state.run_id), ("status", state.status)]
    if state.stop_reason:
        rows.append(("stopped because", state.stop_reason + " (resume with --resume " + state.run_id + ")"))
    if state.library is not None:
        kept = sum(1 for e in state.library.edits if e.accepted)
        verdict = f", {state.library.chosen} library used ({state.library.decision})" if state.library.chosen else ""
        rows.append(("library stage", f"{kept} of {len(state.library.edits)} edits kept{verdict}"))
    if state.beam is not None:
        rows.append(("beam levels", f"{state.beam.levels_done} ({state.beam.stop_reason or 'in progress'})"))
    for v in state.validation.values():
        mark = " (chosen)" if v.node_id == state.chosen else ""
        score = "n/a" if v.score is None else f"{v.score:.3f}"
        refusal = ", ".join(
            f"{name.removesuffix('_refusal')} {value:.2f}"
            for name, value in Scored(v.node_id, v.evaluations).rates.items()
            if value is not None and name.endswith("_refusal")
        )
        refusal = f", refusal: {refusal}" if refusal else ""
        rows.append((f"validation {v.node_id}{mark}", f"{score}{refusal}, {v.excluded} judge failures excluded"))
    rows += [
        ("examples", len([r for r in state.icl.values() if r.answer.strip()])),
        ("calls (fresh / cached)", f"{c.fresh_calls} / {c.cached_calls}"),
        ("tokens (prompt + completion)", f"{c.prompt_tokens} + {c.completion_tokens}"),
        ("parse retries / recovered / failures", f"{c.parse_retries} / {c.parse_recovered} / {c.parse_failures}"),
        ("backoff retries", c.transient_retries),
        ("elapsed", f"{outcome.elapsed:.1f}s"),
        ("run dir", outcome.run_dir),
    ]
    if outcome.artifact is not None:
        state_word = "activated" if activated else "not activated (use --activate or drpo prompts activate)"
        rows.append(("new version", f"{outcome.artifact.model} {outcome.artifact.version} ({state_word})"))
    return rows


def print_summary(console: Console, outcome: RunOutcome, activated: bool) -> None:
    console.print(summary_table(summary_rows(outcome, activated)))
