"""`drpo prompts ...`: work on the artifact store (to be written)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and change stored prompt artifacts.", no_args_is_help=True)
