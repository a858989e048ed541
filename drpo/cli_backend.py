"""`drpo backend`: run a managed model server (embedded llama.cpp, or vLLM) in the foreground."""

from __future__ import annotations

import signal
import threading

import typer
from pydantic import ValidationError

from drpo.child_server import ServerLaunchError
from drpo.engines import Engine, log_path, managed_backend, served_model_id
from prompts.config import get_settings


def register(app: typer.Typer) -> None:
    app.command("backend")(backend)


def backend(
    port: int = typer.Option(8001, "--port", help="Port for the backend's OpenAI server."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    engine: Engine = typer.Option(
        Engine.LLAMACPP, "--engine", help="llamacpp: the embedded SmolLM2-135M; vllm: `vllm serve --model` (GPU)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="With --engine vllm: the Hugging Face id or path to serve (also its model id)."
    ),
    extra_args: list[str] = typer.Argument(
        None, metavar="[-- VLLM_ARGS...]", help="With --engine vllm: arguments passed to `vllm serve` unchanged."
    ),
) -> None:
    """Run a model server until Ctrl-C: the embedded llama.cpp backend (default) or vLLM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        log = log_path(get_settings().home, engine)
    except ValidationError as exc:
        typer.echo(f"error: invalid DRPO_* environment: {exc.errors()[0].get('msg', exc)}", err=True)
        raise typer.Exit(2) from exc
    try:
        server = managed_backend(engine, model, extra_args or [], port=port, host=host, log=log)
        typer.echo(f"starting the {server.name} (log: {log}) ...")
        with server:
            model_id = served_model_id(engine, model)
            typer.echo(f"{server.name} ready: {server.base_url} (model id {model_id}); Ctrl-C to stop")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    except ServerLaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
