"""`drpo prompts promote MODEL VERSION`: activate a version only if it passes the gate."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from drpo.actor import cli_actor
from drpo.endpoints import target_endpoint
from drpo.promote import GATE_MAX_TOKENS, GateSettings, gate_and_activate, gate_sources
from optimizer.errors import OptimizerError
from optimizer.evalsets import BUILTIN_VAL, SET_NAMES
from optimizer.gate import DEFAULT_MARGIN
from prompts.config import ConfigError, GateOptions, Settings, get_settings
from prompts.errors import PromptsError
from prompts.store import open_store

T = TypeVar("T")

HELP = (
    "Activate VERSION of MODEL only if, on labelled prompts (default: the packaged validation set), it is no "
    "worse than the active version (or the built-in default) on every refusal rate, within --margin, and "
    "better on the objective. Otherwise it stays a candidate: the reason is printed and the exit code is 4. "
    "The eval report is stored either way. --force activates without the gate."
)


def promote(
    model: str = typer.Argument(..., help="Model id."),
    version: str = typer.Argument(..., help="Version id or unique prefix."),
    force: bool = typer.Option(False, "--force", help="Activate without evaluating."),
    sets: list[str] = typer.Option([], "--set", help=f"Gate set (repeatable): {', '.join(SET_NAMES)}."),
    queries: list[Path] = typer.Option([], "--queries", help="Labelled JSONL gate file (repeatable)."),
    margin: float = typer.Option(
        None, "--margin", min=0.0, max=1.0, help=f"Allowed worsening per rate (default: config, else {DEFAULT_MARGIN})."
    ),
    objective: str = typer.Option(None, "--objective", help="alignment | judge (default: config, else alignment)."),
    backend: str = typer.Option(None, "--backend", help="Target endpoint URL (default: config / embedded)."),
    max_tokens: int = typer.Option(
        None, "--max-tokens", min=1, help=f"Answer length cap (default: config, else {GATE_MAX_TOKENS})."
    ),
    config: Path = typer.Option(None, "--config", help="YAML/TOML config file."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    console = Console(stderr=True)
    if objective is not None and objective not in ("alignment", "judge"):
        raise typer.BadParameter("must be alignment or judge", param_hint="--objective")
    if "test" in sets or "eval-dev:test" in sets:
        raise typer.BadParameter("the test split is for reporting only; gate on val or builtin-val", param_hint="--set")
    try:
        settings = Settings(config=config) if config else get_settings()
        file_config = settings.file_config()
        if force:
            with open_store(settings, actor=cli_actor()) as store:
                resolved = store.activate(model, version, action="promote --force")
            typer.echo(f"promoted {resolved} (forced, gate skipped)")
            return
        target_url, target_key = target_endpoint(model, backend, settings, file_config)
        # The model's refresh: gate in the config file applies to a manual promotion too; flags win.
        refresh = file_config.refresh.get(model)
        configured = refresh.gate if refresh else GateOptions()
        names, files = (tuple(sets), tuple(queries)) if sets or queries else gate_sources(configured.all_sets())
        gate = GateSettings(
            names if names or files else (BUILTIN_VAL,),
            files,
            _first(margin, configured.margin, DEFAULT_MARGIN),
            _first(objective, configured.objective, "alignment"),  # type: ignore[arg-type]
            _first(max_tokens, configured.max_tokens, GATE_MAX_TOKENS),
        )
        outcome = gate_and_activate(
            console, settings, model, version, target_url, target_key, gate, quiet, actor=cli_actor()
        )
    except (ConfigError, PromptsError, OptimizerError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    outcome.announce()


def _first(*values: T | None) -> T:
    """The first value that is set (the last one is the default and always is)."""
    return next(v for v in values if v is not None)
