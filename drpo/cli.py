"""The ``drpo`` command: ``serve``, ``backend``, ``prompts ...``, ``optimize``, ``eval``, ``worker``.

Each subcommand lives in its own module; this file only wires them together.
"""

from __future__ import annotations

import typer

from drpo import cli_backend, cli_eval, cli_optimize, cli_promote, cli_prompts, cli_serve, cli_worker

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
cli_eval.register(app)
cli_worker.register(app)
cli_prompts.app.command("promote", help=cli_promote.HELP)(cli_promote.promote)
app.add_typer(cli_prompts.app, name="prompts")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
