"""The ``drpo`` command: ``serve``, ``backend``, ``prompts ...``, ``optimize``.

Each subcommand lives in its own module; this file only wires them together.
"""

from __future__ import annotations

import typer

from drpo import cli_backend, cli_optimize, cli_prompts, cli_serve

app = typer.Typer(
    name="drpo",
    help="drpo-proxy: serve DRPO-aligned models behind an OpenAI-compatible API, and optimize their prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli_serve.register(app)
cli_backend.register(app)
cli_optimize.register(app)
app.add_typer(cli_prompts.app, name="prompts")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
