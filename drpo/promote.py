"""Promotion through the gate: evaluate a candidate against what is live, then activate or keep it.

Used by `drpo prompts promote` and `drpo optimize --activate` (and later by the refresh worker).
The baseline is the model's active version, or the built-in default when it has none (that is
what the proxy serves then). Both are answered on the same labelled prompts through the
served layout; :func:`optimizer.gate.decide` gives the verdict; the eval report is stored with
the versions it evaluated, whatever the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from drpo.evalrun import EvalJob, run_eval
from optimizer.evalsets import BUILTIN_VAL, SET_NAMES, gather
from optimizer.evaluate import Condition
from optimizer.gate import DEFAULT_MARGIN, GateDecision, Objective, decide
from prompts.config import ConfigError, Settings
from prompts.served import served_artifact
from prompts.store import open_store

EXIT_KEPT_AS_CANDIDATE = 4
GATE_MAX_TOKENS = 96  # refusal is read from an answer's opening; short answers keep the gate cheap


@dataclass(frozen=True)
class GateSettings:
    sets: tuple[str, ...] = (BUILTIN_VAL,)
    files: tuple[Path, ...] = ()
    margin: float = DEFAULT_MARGIN
    objective: Objective = "alignment"
    max_tokens: int = GATE_MAX_TOKENS
    concurrency: int = 4


@dataclass(frozen=True)
class GateOutcome:
    version: str
    decision: GateDecision
    report: dict[str, Any]
    report_id: str | None

    def message(self) -> str:
        if self.decision.promote:
            return f"promoted {self.version}: {self.decision.reason}"
        return f"kept {self.version} as candidate: {self.decision.reason}"

    def announce(self) -> None:
        """Print the outcome line; a version kept as candidate ends the command with exit code 4."""
        typer.echo(self.message())
        if not self.decision.promote:
            raise typer.Exit(EXIT_KEPT_AS_CANDIDATE)


def gate_sources(sources: list[str]) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """A config's gate ``eval_set`` entries as (set names, labelled files); ConfigError for neither."""
    names: list[str] = []
    files: list[Path] = []
    for source in sources:
        if source.removeprefix("eval-dev:") == "test":
            raise ConfigError("gate eval set 'test': the test split is for reporting only; gate on val or builtin-val")
        if source in SET_NAMES:
            names.append(source)
        elif Path(source).is_file():
            files.append(Path(source))
        else:
            raise ConfigError(f"gate eval set {source!r} is neither a set name ({', '.join(SET_NAMES)}) nor a file")
    return tuple(names), tuple(files)


def gate_and_activate(
    console: Console,
    settings: Settings,
    model: str,
    version: str,
    target_url: str,
    target_key: str | None,
    gate: GateSettings,
    quiet: bool = False,
    actor: str | None = None,
) -> GateOutcome:
    """Evaluate ``version`` against the live baseline; activate it only if the gate passes."""
    with open_store(settings) as store:
        candidate = store.get(model, version)
        active = store.active_version(model)
        baseline_artifact, _ = served_artifact(store, model)
    baseline_name = f"active:{active}" if active else "default"
    conditions = [Condition(baseline_name, baseline_artifact), Condition(candidate.version, candidate)]
    queries = gather(list(gate.sets), list(gate.files))
    sources = [*gate.sets, *(str(f) for f in gate.files)]
    job = EvalJob(
        model,
        conditions,
        queries,
        sources,
        target_url,
        target_key,
        max_tokens=gate.max_tokens,
        concurrency=gate.concurrency,
    )
    report = run_eval(console, settings, job, quiet=quiet)
    decision = decide(report, candidate.version, baseline_name, margin=gate.margin, objective=gate.objective)
    stored = {k: v for k, v in report.items() if k != "answers"}
    with open_store(settings, actor=actor) as store:
        if decision.promote and store.active_version(model) != active:
            decision = GateDecision(False, "the active version changed while the gate ran; run it again")
        stored["gate"] = {**decision.as_dict(), "margin": gate.margin, "objective": gate.objective}
        report_id = store.add_eval_report(model, stored)
        if decision.promote:
            store.activate(model, candidate.version, action="promote")
    return GateOutcome(candidate.version, decision, report, report_id)
