"""Refresh schedules: an interval (``90s``, ``30m``, ``6h``, ``1d``, ``1h30m``) or a cron expression.

A model that has never been refreshed is due at once; after that, an interval counts from the
start of the last run and a cron expression fires at its next time after the last run ended. Times are
timezone-aware UTC throughout (cron expressions are read in UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL = re.compile(r"(?:(\d+)\s*([smhdw])\s*)+")
_PART = re.compile(r"(\d+)\s*([smhdw])")


@dataclass(frozen=True)
class Schedule:
    text: str
    interval: timedelta | None  # None: a cron expression

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """An interval or a cron expression; ValueError with the accepted forms otherwise."""
        cleaned = text.strip().lower()
        if _INTERVAL.fullmatch(cleaned):
            seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(cleaned))
            if seconds <= 0:
                raise ValueError(f"schedule {text!r}: an interval must be longer than zero")
            return cls(text, timedelta(seconds=seconds))
        if croniter.is_valid(text.strip()):
            return cls(text.strip(), None)
        raise ValueError(
            f"schedule {text!r} is neither an interval (e.g. 90s, 30m, 6h, 1d, 1h30m) "
            "nor a cron expression (e.g. '0 */6 * * *')"
        )

    def next_run(self, last_start: datetime | None, now: datetime, last_end: datetime | None = None) -> datetime:
        """When the next run is due: ``now`` if never run; an interval after the last start; the
        cron time after the last run ended (a slot that passed while a run was going is skipped)."""
        if last_start is None:
            return now
        if self.interval is not None:
            return last_start + self.interval
        following: datetime = croniter(self.text, max(last_start, last_end or last_start)).get_next(datetime)
        return following
