# ruff: noqa: E501  (the --help text keeps one line per paragraph so it reflows to the terminal)
"""`drpo worker`: keep each model's prompts fresh in the background (optimize → eval → gate → activate)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import typer

from drpo.promote import EXIT_KEPT_AS_CANDIDATE
from drpo.refresh import RefreshRunner, check_refresh_config
from drpo.worker import Worker
from drpo.worker_metrics import WorkerMetrics
from prompts.config import ConfigError, RefreshOptions, Settings, get_settings

EXIT_CONFIG = 2
EXIT_NOT_DONE = 3  # --run-now: stopped, interrupted, or another worker holds the model
DEFAULT_METRICS_PORT = 9101

HELP = """Refresh each model listed under `refresh:` in the config file when its schedule is due: run the optimizer, evaluate the new version against the live one on labelled prompts (the promotion gate), and activate it only if it passes; otherwise it stays a candidate. One model at a time.

Every run is recorded in the store (`drpo prompts refresh-runs`, GET /admin/refresh-runs). A run left unfinished by SIGTERM or a crash is resumed from its checkpoint on the next start. SIGTERM stops the worker at the next checkpoint.

--once runs whatever is due and exits (for a Kubernetes CronJob). --run-now MODEL refreshes MODEL at once and exits, printing `promoted VERSION` or `kept VERSION as candidate: REASON` (exit code 0 or 4); a model without a `refresh:` entry gets the optimizer's and the gate's defaults, on the embedded backend when no backend is configured."""


def register(app: typer.Typer) -> None:
    app.command("worker", help=HELP)(worker)


def worker(
    config: Path = typer.Option(None, "--config", help="YAML/TOML config file with a refresh: section."),
    once: bool = typer.Option(False, "--once", help="Run whatever is due, then exit."),
    run_now: str = typer.Option(None, "--run-now", metavar="MODEL", help="Refresh MODEL now, print the outcome, exit."),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT, "--metrics-port", min=0, max=65535, help="Prometheus metrics port (0: off)."
    ),
    metrics_host: str = typer.Option("0.0.0.0", "--metrics-host", help="Address for the metrics port."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(config=config) if config else get_settings()
        refresh = settings.file_config().refresh
        check_refresh_config(refresh)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc

    metrics = WorkerMetrics()
    runner = RefreshRunner(settings, metrics)
    stop_on_sigterm(runner)
    if run_now:
        result = runner.run(run_now, refresh.get(run_now) or RefreshOptions(), trigger="manual")
        typer.echo(result.message)
        raise typer.Exit(_exit_code(result.outcome))
    if metrics_port:
        try:
            metrics.serve(metrics_port, metrics_host)
        except OSError as exc:
            typer.echo(f"error: cannot serve metrics on {metrics_host}:{metrics_port}: {exc}", err=True)
            raise typer.Exit(EXIT_CONFIG) from exc
    loop = Worker(refresh, runner)
    if once:
        for result in loop.run_due():
            typer.echo(result.message)
        return
    typer.echo(f"drpo worker: refreshing {', '.join(refresh) or 'nothing'}; metrics on :{metrics_port or 'off'}")
    loop.serve_forever()


def stop_on_sigterm(runner: RefreshRunner) -> None:
    """SIGTERM / SIGINT: finish at the next checkpoint (the running child is told to stop too)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, frame: Any) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _exit_code(outcome: str) -> int:
    if outcome == "promoted":
        return 0
    if outcome == "candidate":
        return EXIT_KEPT_AS_CANDIDATE
    if outcome == "failed":
        return 1
    return EXIT_NOT_DONE
