"""`drpo backend`: run the embedded llama.cpp server in the foreground."""

from __future__ import annotations

import signal
import threading

import typer

from drpo.embedded import EmbeddedBackend, EmbeddedBackendError
from prompts.config import EMBEDDED_MODEL_ID


def register(app: typer.Typer) -> None:
    app.command("backend")(backend)


def backend(
    port: int = typer.Option(8001, "--port", help="Loopback port for the llama.cpp OpenAI server."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
) -> None:
    """Run the embedded backend (llama.cpp + SmolLM2-135M-Instruct) until Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with EmbeddedBackend(port=port, host=host) as server:
            typer.echo(f"embedded backend ready: {server.base_url} (model id {EMBEDDED_MODEL_ID}); Ctrl-C to stop")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    except EmbeddedBackendError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
