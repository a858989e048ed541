# ruff: noqa: E501  (the --help text keeps one line per paragraph so it reflows to the terminal)
"""`drpo optimize`: run DRPO for one model and store the result as a new artifact version.

The composition root for the optimizer: it resolves the four role endpoints (flags >
config file > environment > the embedded backend), starts the embedded backend only
when a role needs it, and hands everything to :mod:`optimizer.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from drpo.endpoints import EMBEDDED, key_for, target_endpoint
from optimizer.checkpoint import RunDir, new_run_id
from optimizer.config import (
    JUDGE_MAX_TOKENS,
    OPTIMIZER_MAX_TOKENS,
    SELECTOR_MAX_TOKENS,
    TARGET_MAX_TOKENS,
    OptimizeConfig,
)
from optimizer.data import Query, icl_seed_queries, load_query_file, seed_queries
from optimizer.errors import OptimizerError
from optimizer.estimate import project
from optimizer.evalsets import BUILTIN_VAL, SET_NAMES, load_labelled_file, resolve_set
from optimizer.llm import Endpoint, JsonDialect
from optimizer.openai_transport import OpenAITransport
from optimizer.run import Optimization, Paths, Roles, RunOutcome, initial_state, print_summary
from prompts.artifact import Layout
from prompts.config import ConfigError, FileConfig, Settings, get_settings
from prompts.store import registry_url

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
ROLES = ("selector", "judge", "optimizer")
# Measured on this class of machine for SmolLM2-135M on llama.cpp (see BENCHMARKS.md).
EMBEDDED_GEN_TPS = 80.0
EMBEDDED_PROMPT_TPS = 800.0

# One line per paragraph so --help reflows to the terminal width.
HELP = """Align MODEL by searching for its system prompt and example library (DRPO).

Roles: the target is the model being aligned; the selector picks aspects per query, the judge scores answers, the optimizer rewrites prompts and answers. By default all four are the target itself (self-alignment). The target endpoint is --backend, else the config file's backend for the model, else DRPO_BACKEND_URL, else the embedded llama.cpp backend (started for the run, stopped after). API keys come from the environment: DRPO_TARGET_API_KEY, DRPO_SELECTOR_API_KEY, DRPO_JUDGE_API_KEY, DRPO_OPTIMIZER_API_KEY (or a config role's api_key_env; a role on the target's URL reuses the target's key). Keys never enter the cache, the checkpoint or the artifact.

Every LLM call is cached under DRPO_HOME/llm-cache; the run is checkpointed to DRPO_HOME/runs/RUN_ID (state.json, trace.json) and can be continued with --resume RUN_ID. The result is a new artifact version in the store (activated only with --activate, and then only if it passes the promotion gate on --val-set or the packaged validation set: otherwise it stays a candidate and the exit code is 4). """


def register(app: typer.Typer) -> None:
    """Add the `optimize` command to the root app."""
    app.command("optimize", help=HELP)(optimize)


def _read_prompt(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    with contextlib.suppress(OSError):
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return value


def build_roles(
    model: str,
    target_url: str,
    target_key: str | None,
    overrides: dict[str, tuple[str | None, str | None]],
    file_config: FileConfig,
    dialect: JsonDialect,
) -> Roles:
    """Endpoints for the four roles; EMBEDDED stays a placeholder until the backend runs."""

    def endpoint(role: str, url: str, model_id: str, key: str | None) -> Endpoint:
        identity = f"embedded:{model_id}" if url == EMBEDDED else ""
        return Endpoint(role, url, model_id, key, dialect, identity)

    target = endpoint("target", target_url, model, target_key)
    others: dict[str, Endpoint] = {}
    for role in ROLES:
        flag_url, flag_model = overrides.get(role, (None, None))
        conf = file_config.roles.get(role)  # type: ignore[call-overload]
        url = (flag_url or (conf.url if conf else None) or target_url).rstrip("/")
        model_id = flag_model or (conf.model if conf else None) or model
        key = key_for(role, conf.api_key_env if conf else None)
        if key is None and url == target_url:
            key = target_key
        others[role] = endpoint(role, url, model_id, key)
    return Roles(target, others["selector"], others["judge"], others["optimizer"])


def _with_url(roles: Roles, url: str) -> Roles:
    def fix(e: Endpoint) -> Endpoint:
        if e.base_url != EMBEDDED:
            return e
        return Endpoint(e.role, url, e.model, e.api_key, e.dialect, e.identity)

    return Roles(fix(roles.target), fix(roles.selector), fix(roles.judge), fix(roles.optimizer))


@contextlib.contextmanager
def _backend_for(roles: Roles, console: Console, log_path: Path) -> Iterator[Roles]:
    """Start the embedded backend if any role needs it; stop it afterwards."""
    needs = [e for e in (roles.target, roles.selector, roles.judge, roles.optimizer) if e.base_url == EMBEDDED]
    if not needs:
        yield roles
        return
    from drpo.embedded import EmbeddedBackend

    console.print("starting the embedded backend (llama.cpp, SmolLM2-135M-Instruct) ...")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedBackend(log_path=log_path) as backend:
        yield _with_url(roles, backend.base_url)


def _set_name(value: str | None, flag: str) -> str | None:
    """A labelled set the optimizer may use: any known name except the test split."""
    if value is None:
        return None
    if value not in SET_NAMES:
        raise typer.BadParameter(f"unknown set {value!r}; known sets: {', '.join(SET_NAMES)}", param_hint=flag)
    if value.removeprefix("eval-dev:") == "test":
        raise typer.BadParameter(
            "the test split is for reporting only (drpo eval, BENCHMARKS.md); nothing may be trained or "
            "selected on it: use --train-set train and --val-set val",
            param_hint=flag,
        )
    return value


def _load_queries(path: Path | None, train_set: str | None = None, labelled: Path | None = None) -> list[Query]:
    """Training queries: a named labelled set and/or a labelled file, else --queries, else the seed set."""
    if train_set is None and labelled is None:
        return seed_queries() if path is None else load_query_file(path)
    pool = (resolve_set(train_set) if train_set else []) + (load_labelled_file(labelled) if labelled else [])
    seen: set[str] = set()
    out = []
    for q in pool:
        if q.text not in seen:
            seen.add(q.text)
            out.append(Query.from_labelled(q))
    return out


def _queries_source(path: Path | None, train_set: str | None, labelled: Path | None) -> str:
    parts = [f"set {train_set}"] if train_set else []
    parts += [f"labelled file {labelled}"] if labelled else []
    if parts:
        return " + ".join(parts)
    return str(path) if path else "packaged seed set"


def optimize(
    model: str = typer.Option(None, "--model", help="Model id to align (the target). Required unless --resume."),
    backend: str = typer.Option(None, "--backend", help="Target endpoint URL (OpenAI-compatible, …/v1)."),
    selector_url: str = typer.Option(None, "--selector-url", help="Selector endpoint (default: the target's)."),
    selector_model: str = typer.Option(None, "--selector-model", help="Selector model id (default: --model)."),
    judge_url: str = typer.Option(None, "--judge-url", help="Judge endpoint (default: the target's)."),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge model id (default: --model)."),
    optimizer_url: str = typer.Option(None, "--optimizer-url", help="Optimizer endpoint (default: the target's)."),
    optimizer_model: str = typer.Option(None, "--optimizer-model", help="Optimizer model id (default: --model)."),
    config: Path = typer.Option(None, "--config", help="YAML/TOML config file (backends, models, roles)."),
    queries: Path = typer.Option(
        None,
        "--queries",
        help="Training queries: JSONL (query|instruction|prompt field), a JSON list of such objects, "
        "or plain text one query per line. Default: the packaged seed set (154 queries).",
    ),
    train_set: str = typer.Option(
        None,
        "--train-set",
        help="Labelled training queries from a named set: builtin-val, train, val (eval-dev splits). "
        "'test' is refused: it is for reporting only.",
    ),
    val_set: str = typer.Option(
        None,
        "--val-set",
        help="Labelled validation queries for the final pick (e.g. val, builtin-val), capped at --val-size "
        "with every label kept (0: the whole set). Default: --val-size queries split off the training queries.",
    ),
    labelled_queries: Path = typer.Option(
        None,
        "--labelled-queries",
        help="Labelled training queries: JSONL with 'query' and 'label' (harmful | lookalike | ordinary).",
    ),
    mode: str = typer.Option(None, "--mode", help="Target layout: chat | completion (default: config, else chat)."),
    beam: int = typer.Option(2, "--beam", min=1, help="Beam width: states kept per level."),
    actions: int = typer.Option(3, "--actions", min=1, help="Prompt rewrites per beam state and level."),
    depth: int = typer.Option(6, "--depth", min=0, help="Beam levels (one new mini-batch of queries each)."),
    max_depth_increase: int = typer.Option(
        3, "--max-depth-increase", min=0, help="Extra levels allowed for levels skipped as already excellent."
    ),
    optimizer_temperature: float = typer.Option(0.2, "--optimizer-temperature", help="Optimizer sampling temperature."),
    initial_prompt: str = typer.Option(None, "--initial-prompt", help="Initial system prompt: text or a file path."),
    seed: int = typer.Option(0, "--seed", help="Seed for the train/validation split and optimizer sampling."),
    icl_queries: int = typer.Option(16, "--icl-queries", min=0, help="Seed queries turned into examples (Stage 1)."),
    icl_iters: int = typer.Option(5, "--icl-iters", min=0, help="Improvement rounds per example (Stage 1)."),
    val_size: int = typer.Option(10, "--val-size", min=0, help="Held-out validation queries."),
    judge_samples: int = typer.Option(1, "--judge-samples", min=1, help="Judge calls averaged per answer."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Training queries per beam level and per library round (mini-batch)."
    ),
    library_rounds: int = typer.Option(
        4, "--library-rounds", min=0, help="Library-stage rounds (0: keep Stage 1's examples as they are)."
    ),
    library_edits: int = typer.Option(2, "--library-edits", min=1, help="Library edits proposed per round."),
    refusal_margin: float = typer.Option(
        0.0,
        "--refusal-margin",
        min=0.0,
        max=1.0,
        help="How much worse a refusal rate may get on val before a candidate is disqualified.",
    ),
    k: int = typer.Option(3, "--k", min=0, max=16, help="Examples retrieved per query (stored in the artifact)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="LLM calls in flight at once."),
    max_calls: int = typer.Option(None, "--max-calls", min=1, help="Stop cleanly after this many fresh LLM calls."),
    max_tokens: int = typer.Option(
        None, "--max-tokens", min=1, help="Stop cleanly after this many fresh tokens (prompt + completion)."
    ),
    target_max_tokens: int = typer.Option(TARGET_MAX_TOKENS, "--target-max-tokens", min=1, help="Answer length cap."),
    judge_max_tokens: int = typer.Option(JUDGE_MAX_TOKENS, "--judge-max-tokens", min=1, help="Judge reply cap."),
    selector_max_tokens: int = typer.Option(SELECTOR_MAX_TOKENS, "--selector-max-tokens", min=1, help="Selector cap."),
    optimizer_max_tokens: int = typer.Option(
        OPTIMIZER_MAX_TOKENS, "--optimizer-max-tokens", min=1, help="Optimizer reply cap (rewritten prompt/answer)."
    ),
    json_dialect: str = typer.Option(
        "auto",
        "--json-dialect",
        help="Structured-output dialect: auto (detect per endpoint) | json_schema (OpenAI, vLLM) | "
        "json_object (llama.cpp: json_object + schema) | none (instructions only).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print projected calls and tokens; call nothing."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN_ID from its checkpoint."),
    run_id: str = typer.Option(
        None,
        "--run-id",
        help="Id for a new run (default: generated). Lets a scheduler know where the checkpoint is before the run ends.",
    ),
    activate: bool = typer.Option(
        False,
        "--activate",
        help="Activate the new version if it passes the promotion gate (exit 4 if kept as candidate).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress line (summary only)."),
) -> None:
    console = Console(stderr=True)
    try:
        settings = Settings(config=config) if config else get_settings()
        file_config = settings.file_config()
    except (ConfigError, ValueError) as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from exc
    if json_dialect not in ("auto", "json_schema", "json_object", "none"):
        raise typer.BadParameter("must be auto, json_schema, json_object or none", param_hint="--json-dialect")
    paths = Paths(settings.runs_dir, settings.cache_dir, settings.store_dir, registry_url(settings))
    try:
        if resume:
            run_dir = RunDir(paths.runs_dir, resume)
            state = run_dir.load()
            budget: dict[str, Any] = {"concurrency": concurrency, "max_calls": max_calls, "max_tokens": max_tokens}
            cfg = OptimizeConfig.from_checkpoint(state.config, **budget)
            state.config = cfg.model_dump(mode="json")
        else:
            if not model:
                raise typer.BadParameter("--model is required (or --resume RUN_ID)", param_hint="--model")
            train_name, val_name = _set_name(train_set, "--train-set"), _set_name(val_set, "--val-set")
            if queries and (train_name or labelled_queries):
                raise typer.BadParameter(
                    "use --queries or --train-set/--labelled-queries, not both", param_hint="--queries"
                )
            options = file_config.options_for(model)
            layout: Layout = "completion" if (mode or options.mode) == "completion" else "chat"
            cfg = OptimizeConfig(
                model=model,
                layout=layout,
                beam=beam,
                actions=actions,
                depth=depth,
                max_depth_increase=max_depth_increase,
                optimizer_temperature=optimizer_temperature,
                initial_prompt=_read_prompt(initial_prompt) or OptimizeConfig.model_fields["initial_prompt"].default,
                seed=seed,
                icl_queries=icl_queries,
                icl_iters=icl_iters,
                val_size=val_size,
                judge_samples=judge_samples,
                concurrency=concurrency,
                max_calls=max_calls,
                max_tokens=max_tokens,
                k=options.k if options.k is not None else k,
                target_max_tokens=target_max_tokens,
                judge_max_tokens=judge_max_tokens,
                selector_max_tokens=selector_max_tokens,
                optimizer_max_tokens=optimizer_max_tokens,
                queries_source=_queries_source(queries, train_name, labelled_queries),
                val_source=val_name or "",
                batch_size=batch_size,
                library_rounds=library_rounds,
                library_edits=library_edits,
                refusal_margin=refusal_margin,
            )
            val = [Query.from_labelled(q) for q in resolve_set(val_name)] if val_name else None
            pool = _load_queries(queries, train_name, labelled_queries)
            state = initial_state(_new_run_id(run_id, paths.runs_dir), cfg, pool, icl_seed_queries(), val)
        stored = state.roles if resume else {}
        target_flag: str | None = backend
        if not target_flag and "target" in stored and stored["target"]["url"] != EMBEDDED:
            target_flag = stored["target"]["url"]
        target_url, target_key = target_endpoint(cfg.model, target_flag, settings, file_config)
        flags = {
            "selector": (selector_url, selector_model),
            "judge": (judge_url, judge_model),
            "optimizer": (optimizer_url, optimizer_model),
        }
        overrides = {
            role: (url or stored.get(role, {}).get("url"), name or stored.get(role, {}).get("model"))
            for role, (url, name) in flags.items()
        }
        roles = build_roles(cfg.model, target_url, target_key, overrides, file_config, json_dialect)  # type: ignore[arg-type]
        state.roles = {
            e.role: {"url": e.base_url, "model": e.model}
            for e in (roles.target, roles.selector, roles.judge, roles.optimizer)
        }
    except OptimizerError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from exc

    if dry_run:
        _print_projection(console, cfg, state.queries, roles)
        return
    with _backend_for(roles, console, paths.runs_dir / state.run_id / "embedded-backend.log") as live_roles:
        # Never activated by the run itself: --activate goes through the promotion gate below.
        optimization = Optimization(state, cfg, live_roles, OpenAITransport(), paths, None if quiet else console, False)
        try:
            outcome = asyncio.run(_run_stopping_on_sigterm(optimization))
        except OptimizerError as exc:
            console.print(f"error: {exc} (run {state.run_id} can be resumed with --resume {state.run_id})")
            raise typer.Exit(1) from exc
    print_summary(console, outcome, False)
    typer.echo(state.run_id)
    if outcome.stopped:
        raise typer.Exit(3)
    if activate and outcome.artifact is not None:
        _promote_through_gate(
            console, settings, cfg.model, outcome.artifact.version, target_url, target_key, val_set, quiet
        )


def _new_run_id(requested: str | None, runs_dir: Path) -> str:
    if requested is None:
        return new_run_id()
    if not RUN_ID_PATTERN.fullmatch(requested):
        raise typer.BadParameter("use 1-64 letters, digits, '.', '_' or '-'", param_hint="--run-id")
    if RunDir(runs_dir, requested).exists():
        raise typer.BadParameter(
            f"run {requested} exists; continue it with --resume {requested}", param_hint="--run-id"
        )
    return requested


async def _run_stopping_on_sigterm(optimization: Optimization) -> RunOutcome:
    """SIGTERM stops the run at its next LLM call, like a spent budget: checkpointed and resumable."""
    loop = asyncio.get_running_loop()
    stop = functools.partial(optimization.llm.budget.request_stop, "stopped by SIGTERM")
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        return await optimization.run()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _promote_through_gate(
    console: Console,
    settings: Settings,
    model: str,
    version: str,
    target_url: str,
    target_key: str | None,
    val_set: str | None,
    quiet: bool,
) -> None:
    """--activate: the new version goes live only if it passes the gate on the validation set."""
    from drpo.actor import cli_actor
    from drpo.promote import GateSettings, gate_and_activate

    gate = GateSettings(sets=(val_set or BUILTIN_VAL,))
    console.print(f"promotion gate: {version} against the live version on {gate.sets[0]} ...")
    try:
        outcome = gate_and_activate(
            console, settings, model, version, target_url, target_key, gate, quiet, actor=cli_actor()
        )
    except OptimizerError as exc:
        console.print(f"error: the gate could not run: {exc}; {version} stays a candidate")
        raise typer.Exit(1) from exc
    outcome.announce()


def _print_projection(console: Console, cfg: OptimizeConfig, queries: dict[str, list[Any]], roles: Roles) -> None:
    n_train, n_val, n_icl = len(queries["train"]), len(queries["validation"]), len(queries["icl"])
    p = project(cfg, n_train, n_val, n_icl)
    console.print(
        f"dry run: nothing was started or called. {n_train} train, {n_val} validation, {n_icl} example queries"
    )
    for e in (roles.target, roles.selector, roles.judge, roles.optimizer):
        where = "embedded backend (started on demand)" if e.base_url == EMBEDDED else e.base_url
        console.print(f"  {e.role:<9} {e.model} @ {where}")
    for stage, calls in p.calls.items():
        console.print(f"  {stage:<10} ≤ {calls} calls")
    console.print(
        f"projected (upper bound): {p.total_calls} calls, {p.prompt_tokens} prompt + "
        f"{p.completion_tokens} completion tokens = {p.total_tokens} tokens"
    )
    minutes = p.seconds(EMBEDDED_GEN_TPS, EMBEDDED_PROMPT_TPS) / 60
    console.print(
        f"on one llama.cpp backend at ~{EMBEDDED_GEN_TPS:.0f} generated and ~{EMBEDDED_PROMPT_TPS:.0f} prompt "
        f"tokens/s: ≤ {minutes:.0f} minutes"
    )
    if cfg.max_calls or cfg.max_tokens:
        console.print(f"budget: max calls {cfg.max_calls or '-'}, max tokens {cfg.max_tokens or '-'}")
