"""Running an eval: start the embedded backend if needed, answer, show progress, build the report.

Shared by `drpo eval` and the promotion gate (`drpo prompts promote`, `drpo optimize --activate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from drpo.endpoints import EMBEDDED
from optimizer.errors import OptimizerError
from optimizer.evalsets import LabelledQuery
from optimizer.evaluate import AnswerRecord, Condition, Evaluator, build_report, pairwise_win_rate
from optimizer.llm import Budget, Endpoint, LLMCache, LLMClient
from optimizer.openai_transport import OpenAITransport
from optimizer.progress import PLAIN_INTERVAL_S
from prompts.config import Settings


@dataclass(frozen=True)
class EvalJob:
    model: str
    conditions: list[Condition]
    queries: list[LabelledQuery]
    sources: list[str]
    target_url: str  # a URL, or EMBEDDED
    target_key: str | None = None
    judge: tuple[str | None, str | None] = (None, None)
    refusal_judge: tuple[str | None, str | None] = (None, None)
    samples: int = 1
    concurrency: int = 4
    max_tokens: int = 160
    max_calls: int | None = None
    pairwise: tuple[str, str] | None = None  # two condition names to compare with the judge


class ProgressReporter:
    """A live bar on a terminal; otherwise plain lines at most every PLAIN_INTERVAL_S (logs, CI, workers),
    the same cadence as the optimizer's progress view."""

    def __init__(self, console: Console, total: int, llm: LLMClient, quiet: bool) -> None:
        self.console = console
        self.total = total
        self.llm = llm
        self.done = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._live = console.is_terminal and not quiet
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressReporter:
        if self._live:
            self._progress = Progress(
                TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=self.console
            )
            self._progress.start()
            self._task = self._progress.add_task("answers", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def tick(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if self._quiet or (now - self._last_line < PLAIN_INTERVAL_S and self.done < self.total):
            return
        self._last_line = now
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        c = self.llm.counters
        self.console.print(
            f"eval: {self.done}/{self.total} answers, calls fresh {c.fresh_calls} cached {c.cached_calls}, "
            f"tokens {c.tokens}, elapsed {elapsed:.0f}s, eta {eta:.0f}s",
            highlight=False,
            soft_wrap=True,
        )


def run_eval(console: Console, settings: Settings, job: EvalJob, quiet: bool = False) -> dict[str, Any]:
    """Answer every query under every condition and return the report (errors exit 1)."""
    from drpo.embedded import EmbeddedBackend

    model, target_url, target_key = job.model, job.target_url, job.target_key
    judge, refusal_judge, samples = job.judge, job.refusal_judge, job.samples
    conditions, labelled = job.conditions, job.queries

    with contextlib.ExitStack() as stack:
        live_url = target_url
        if target_url == EMBEDDED:
            if not quiet:
                console.print("starting the embedded backend (llama.cpp, SmolLM2-135M-Instruct) ...")
            log = settings.runs_dir / "eval-embedded-backend.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            live_url = stack.enter_context(EmbeddedBackend(log_path=log)).base_url

        def endpoint(role: str, url: str | None, model_id: str) -> Endpoint:
            # The embedded backend gets a new port every start: name it stably so the cache hits.
            embedded = url in (None, "", EMBEDDED) and target_url == EMBEDDED
            base = live_url if url in (None, "", EMBEDDED) else str(url).rstrip("/")
            key = target_key if base == live_url else None
            return Endpoint(role, base, model_id, key, "auto", f"embedded:{model_id}" if embedded else "")

        target = endpoint("target", None, model)
        judge_ep = endpoint("judge", judge[0], judge[1] or model) if judge[0] or judge[1] else None
        refusal_ep = (
            endpoint("refusal-judge", refusal_judge[0], refusal_judge[1] or model)
            if refusal_judge[0] or refusal_judge[1]
            else None
        )
        cache = LLMCache(settings.cache_dir)
        llm = LLMClient(OpenAITransport(), cache, Budget(max_calls=job.max_calls), concurrency=job.concurrency)
        total = len(conditions) * len(labelled) * samples
        if not quiet:
            console.print(
                f"evaluating {len(conditions)} condition(s) on {len(labelled)} queries "
                f"({samples} sample(s) each): {total} answers",
                highlight=False,
            )
        try:
            with ProgressReporter(console, total, llm, quiet) as progress:
                evaluator = Evaluator(
                    llm, target, max_tokens=job.max_tokens, samples=samples, judge=judge_ep,
                    refusal_judge=refusal_ep, on_answer=progress.tick, embeddings_cache=settings.home / "embeddings",
                )  # fmt: skip

                async def go() -> tuple[list[AnswerRecord], dict[str, Any] | None]:
                    try:
                        answers = await evaluator.run(conditions, labelled)
                        preference = None
                        if job.pairwise is not None and judge_ep is not None:
                            first, second = job.pairwise
                            preference = await pairwise_win_rate(
                                llm,
                                judge_ep,
                                labelled,
                                [r for r in answers if r.condition == first],
                                [r for r in answers if r.condition == second],
                            )
                        return answers, preference
                    finally:
                        await llm.transport.aclose()

                records, preference = asyncio.run(go())
        except OptimizerError as exc:
            console.print(f"error: {exc}", highlight=False)
            raise typer.Exit(1) from exc
        finally:
            cache.close()
        report = build_report(model, conditions, labelled, records, job.sources, llm.counters.as_dict())
        if preference is not None:
            report["pairwise"] = preference
        return report
