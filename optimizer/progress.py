"""Live progress (rich) and the final summary table.

On a terminal the progress is one live line. Anywhere else (a worker, a CronJob, CI,
``drpo optimize … > log``) rich's live display would print nothing until the end, so the view
writes a plain line instead: at every stage change and otherwise at most every
:data:`PLAIN_INTERVAL_S` seconds. The view only reads the counters; it never changes what
the search does.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from optimizer.llm import Counters

PLAIN_INTERVAL_S = 10.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressView:
    def __init__(self, console: Console | None, counters: Counters, projected_calls: int) -> None:
        self.console = console
        self.counters = counters
        self.projected_calls = max(1, projected_calls)
        self.stage = "starting"
        self.position = ""
        self.best: float | None = None
        self.started = time.monotonic()
        self._live: Live | None = None
        self._plain = console is not None and not console.is_terminal
        self._last_plain = float("-inf")

    def __enter__(self) -> ProgressView:
        if self.console is not None and not self._plain:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            self._live = None
        elif self._plain:
            self._print_plain()

    def update(self, stage: str | None = None, position: str | None = None, best: float | None = None) -> None:
        if stage is not None and stage != self.stage:
            self._last_plain = float("-inf")  # a new stage is always reported
            self.stage = stage
        if position is not None:
            self.position = position
        if best is not None:
            self.best = best if self.best is None else max(self.best, best)
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif self._plain and time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            self._print_plain()

    def _print_plain(self) -> None:
        assert self.console is not None
        self._last_plain = time.monotonic()
        self.console.print(self._render().plain, soft_wrap=True, highlight=False, markup=False)

    def eta(self) -> str:
        c = self.counters
        done = c.fresh_calls + c.cached_calls
        elapsed = time.monotonic() - self.started
        if c.fresh_calls == 0:
            return "?"
        remaining = max(0, self.projected_calls - done)
        return "≤" + _clock(remaining * elapsed / max(1, c.fresh_calls))

    def _render(self) -> Text:
        c = self.counters
        best = "-" if self.best is None else f"{self.best:.2f}"
        return Text.assemble(
            (f"{self.stage}", "bold cyan"),
            f" {self.position}  best reward {best}  calls {c.fresh_calls} fresh / {c.cached_calls} cached"
            f"  tokens {c.tokens}  parse failures {c.parse_failures}"
            f"  elapsed {_clock(time.monotonic() - self.started)}  ETA {self.eta()}",
        )


def summary_table(rows: list[tuple[str, Any]]) -> Table:
    table = Table(title="drpo optimize", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, str(value))
    return table
