"""The refresh worker's loop: run each configured model's refresh when its schedule says it is due.

Models are refreshed one at a time, in name order. A run left unfinished by a stop or a kill is
resumed first, before anything new starts. Between runs the worker sleeps until the next run is
due (waking at least every ``max_sleep`` seconds, and at once when asked to stop). The clock and
the sleep are injected, so tests drive the schedule with a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from drpo.refresh import RefreshResult, RefreshRunner
from prompts.config import RefreshOptions
from prompts.schedule import Schedule
from prompts.store import open_store

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Worker:
    def __init__(
        self,
        refresh: dict[str, RefreshOptions],
        runner: RefreshRunner,
        clock: Clock = utc_now,
        wait: Callable[[float], bool] | None = None,
        max_sleep: float = 60.0,
    ) -> None:
        self.refresh = dict(sorted(refresh.items()))
        self.schedules = {model: Schedule.parse(options.schedule) for model, options in self.refresh.items()}
        self.runner = runner
        self.clock = clock
        # wait(seconds) → True when the worker should stop; a stop event's wait by default.
        self.wait = wait or runner.stop.wait
        self.max_sleep = max_sleep

    @property
    def stopping(self) -> bool:
        return self.runner.stop.is_set()

    def next_due(self, model: str, now: datetime | None = None) -> datetime:
        now = now or self.clock()
        with open_store(self.runner.settings) as store:
            if store.current_refresh(model) is not None:
                return datetime.min.replace(tzinfo=UTC)  # unfinished: resume before anything else
            last = store.last_refresh(model)
        started = datetime.fromisoformat(str(last["started_at"])) if last else None
        ended = datetime.fromisoformat(str(last["ended_at"])) if last and last.get("ended_at") else None
        return self.schedules[model].next_run(started, now, ended)

    def run_due(self) -> list[RefreshResult]:
        """Run every refresh that is due now (unfinished ones first); stop early when asked."""
        results = []
        now = self.clock()
        due = sorted((self.next_due(model, now), model) for model in self.refresh)
        for when, model in due:
            if self.stopping:
                break
            if when <= now:
                results.append(self.runner.run(model, self.refresh[model], trigger="schedule"))
        return results

    def serve_forever(self) -> None:
        """Run due refreshes, sleep until the next is due, repeat; return once stopped."""
        if not self.refresh:
            logger.warning("no models under refresh: in the config; the worker has nothing to do")
        while not self.stopping:
            self.run_due()
            if self.stopping:
                break
            sleep = self.max_sleep
            if self.refresh:
                now = self.clock()
                soonest = min(self.next_due(model, now) for model in self.refresh)
                sleep = min(self.max_sleep, max(0.0, (soonest - now) / timedelta(seconds=1)))
            if self.wait(max(sleep, 0.05)):
                break
        logger.info("worker stopped")
