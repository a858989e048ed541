# ruff: noqa: E501  (the --help text keeps one line per paragraph so it reflows to the terminal)
"""`drpo eval`: measure a model's alignment under stored versions, on labelled prompts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from drpo.endpoints import target_endpoint
from drpo.evalrun import EvalJob, run_eval
from optimizer.errors import OptimizerError
from optimizer.evalsets import SET_NAMES, LabelledQuery, gather
from optimizer.evaluate import RAW, Condition
from prompts.config import ConfigError, Settings, get_settings
from prompts.errors import PromptsError
from prompts.served import artifact_by_spec
from prompts.store import PromptStore, open_store, write_atomic

HELP = """Answer labelled prompts under one or more prompt versions of MODEL, exactly as the proxy serves them, and report refusal rates per label (harmful: higher is better; lookalike and ordinary: lower is better) with 95% bootstrap intervals and paired comparisons.

Queries: --set NAME (builtin-val, the packaged validation set; train, val, test: the eval-dev split) and/or --queries FILE (JSONL with "query" and "label": harmful | lookalike | ordinary; "unsafe" counts as harmful, "safe" as lookalike). Default: --set builtin-val.

Versions: --versions V1,V2 (ids or unique prefixes from `drpo prompts list MODEL --versions`; "active"; "default" for the built-in default; add "@completion" to serve a version through the completion layout), or --all-candidates (every stored version that is not active). Default: the active version (the built-in default when MODEL has none). --include-raw adds the model without any injection.

Every call is cached under DRPO_HOME/llm-cache: running the same eval again makes no new calls."""


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_command)


def _split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _resolve_conditions(
    store: PromptStore, model: str, versions: list[str], all_candidates: bool, include_raw: bool
) -> list[Condition]:
    conditions = [Condition.raw()] if include_raw else []
    active = store.active_version(model)
    names = list(versions)
    if all_candidates:
        names += [v.version for v in store.versions(model) if v.version != active]
    for spec in names or ["active"]:
        name, _, layout = spec.partition("@")
        if layout not in ("", "chat", "completion"):
            raise typer.BadParameter(f"unknown layout {layout!r} in {spec!r} (chat or completion)")
        artifact, builtin = artifact_by_spec(store, model, name)
        label = ("default" if builtin else artifact.version) + (f"@{layout}" if layout else "")
        conditions.append(Condition(label, artifact, layout or None))
    return list({c.name: c for c in conditions}.values())  # same name, same content: keep one


def _fmt_rate(metric: dict[str, Any]) -> str:
    return f"{metric['value']:.0%} [{metric['low']:.0%}, {metric['high']:.0%}]"


def print_report(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"drpo eval: {report['model']}  ({', '.join(report['sources'])})")
    for column in (
        "condition",
        "label",
        "n",
        "refusal [95% CI]",
        "refused→complied",
        "rep4",
        "words",
        "empty",
        "errors",
    ):
        table.add_column(column, justify="left" if column in ("condition", "label") else "right")
    for condition in report["conditions"]:
        for label, m in condition["metrics"].items():
            table.add_row(
                condition["name"],
                label,
                str(m["n"]),
                _fmt_rate(m["refusal"]),
                f"{m['refused_then_complied']['value']:.0%}",
                f"{m['repetition_4gram']:.2f}",
                f"{m['mean_words']:.0f}",
                str(m["empty"]),
                str(m["errors"]),
            )
    console.print(table)
    for comparison in report["comparisons"]:
        for label, c in comparison["refusal"].items():
            d = c["difference"]
            console.print(
                f"{comparison['b']} vs {comparison['a']} [{label}]: refusal {d['value']:+.1%} "
                f"[{d['low']:+.1%}, {d['high']:+.1%}], McNemar p={c['p_value']:.3g} "
                f"({c['b_only']} only-{comparison['b']}, {c['a_only']} only-{comparison['a']})",
                highlight=False,
            )
    preference = report.get("pairwise")
    if preference:
        w = preference["win_rate"]
        console.print(
            f"pairwise: {preference['first']} beats {preference['second']} {w['value']:.0%} "
            f"[{w['low']:.0%}, {w['high']:.0%}] of {preference['judgments']} judgments (positions swapped)",
            highlight=False,
        )
    judged = [
        (c["name"], label, m["judge"])
        for c in report["conditions"]
        for label, m in c["metrics"].items()
        if "judge" in m
    ]
    for name, label, scores in judged:
        parts = ", ".join(f"{a} {s['value']:.2f}" for a, s in scores.items())
        console.print(f"judge {name} [{label}]: {parts}", highlight=False)


def eval_command(
    model: str = typer.Option(
        ..., "--model", help="Model id whose versions are evaluated (and the backend's model id)."
    ),
    queries: list[Path] = typer.Option([], "--queries", help="Labelled JSONL file (repeatable)."),
    sets: list[str] = typer.Option([], "--set", help=f"Built-in set (repeatable): {', '.join(SET_NAMES)}."),
    versions: str = typer.Option(
        None, "--versions", help="Comma-separated versions (ids, prefixes, active, default; @completion)."
    ),
    all_candidates: bool = typer.Option(
        False, "--all-candidates", help="Evaluate every stored version that is not active."
    ),
    include_raw: bool = typer.Option(False, "--include-raw", help="Also evaluate the model without injection."),
    backend: str = typer.Option(
        None, "--backend", help="Target endpoint URL (default: config / DRPO_BACKEND_URL / embedded)."
    ),
    judge_url: str = typer.Option(None, "--judge-url", help="Judge endpoint for 1-5 aspect scores (optional)."),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge model id (default: --model)."),
    pairwise: str = typer.Option(
        None, "--pairwise", help="V1,V2: the judge's win rate of V1 over V2, positions swapped (needs a judge)."
    ),
    refusal_judge_url: str = typer.Option(
        None, "--refusal-judge-url", help="LLM refusal classifier endpoint (optional)."
    ),
    refusal_judge_model: str = typer.Option(None, "--refusal-judge-model", help="Refusal classifier model id."),
    samples: int = typer.Option(1, "--samples", min=1, help="Answers per query (1: greedy; more: sampled, seeded)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Calls in flight at once."),
    max_tokens: int = typer.Option(160, "--max-tokens", min=1, help="Answer length cap."),
    max_calls: int = typer.Option(None, "--max-calls", min=1, help="Stop after this many fresh calls."),
    limit: int = typer.Option(
        None, "--limit", min=1, help="Use only the first N queries of each label (quick checks)."
    ),
    out: Path = typer.Option(None, "--out", help="Write the full JSON report (with every answer) here."),
    store_report: bool = typer.Option(
        False, "--store", help="Save the report in the store with the versions it evaluated."
    ),
    config: Path = typer.Option(None, "--config", help="YAML/TOML config file."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    console = Console(stderr=True)
    try:
        settings = Settings(config=config) if config else get_settings()
        file_config = settings.file_config()
        labelled = gather(sets or ([] if queries else ["builtin-val"]), queries)
    except (ConfigError, OptimizerError, ValueError) as exc:
        console.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if limit:
        labelled = first_per_label(labelled, limit)
    sources = [*(sets or ([] if queries else ["builtin-val"])), *(str(q) for q in queries)]
    pair = _split_list(pairwise)
    if pairwise is not None and (len(pair) != 2 or not (judge_url or judge_model)):
        console.print("error: --pairwise takes two versions (V1,V2) and needs --judge-url or --judge-model")
        raise typer.Exit(2)
    try:
        with open_store(settings) as store:
            wanted = _split_list(versions) + [v for v in pair if v != RAW]
            conditions = _resolve_conditions(store, model, wanted, all_candidates, include_raw or RAW in pair)
            names = [_resolve_conditions(store, model, [v], False, False)[0].name if v != RAW else RAW for v in pair]
    except PromptsError as exc:
        console.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc

    target_url, target_key = target_endpoint(model, backend, settings, file_config)
    job = EvalJob(
        model, conditions, labelled, sources, target_url, target_key,
        judge=(judge_url, judge_model), refusal_judge=(refusal_judge_url, refusal_judge_model),
        samples=samples, concurrency=concurrency, max_tokens=max_tokens, max_calls=max_calls,
        pairwise=(names[0], names[1]) if names else None,
    )  # fmt: skip
    report = run_eval(console, settings, job, quiet=quiet)
    print_report(console, report)
    if out:
        write_atomic(out, orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"report written to {out}", highlight=False)
    sys.stdout.write(orjson.dumps(_summary_line(report)).decode() + "\n")
    if store_report:
        try:
            with open_store(settings) as store:
                report_id = store.add_eval_report(model, _without_answers(report))
        except PromptsError as exc:  # e.g. the shared registry is down: the report above is not lost
            hint = f" (it is in {out})" if out else " (use --out FILE to keep it)"
            console.print(f"error: the report was not stored: {exc}{hint}", highlight=False)
            raise typer.Exit(1) from exc
        console.print(f"report stored as {report_id}", highlight=False)


def first_per_label(queries: Sequence[LabelledQuery], limit: int) -> list[LabelledQuery]:
    counts: dict[str, int] = {}
    out = []
    for query in queries:
        if counts.get(query.label, 0) < limit:
            counts[query.label] = counts.get(query.label, 0) + 1
            out.append(query)
    return out


def _without_answers(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "answers"}


def _summary_line(report: dict[str, Any]) -> dict[str, Any]:
    return {
        c["name"]: {f"{label}_refusal": m["refusal"]["value"] for label, m in c["metrics"].items()}
        for c in report["conditions"]
    }
