"""``/ready``'s backend check, reused for a short while.

``/ready`` is open (load balancers call it without a key), so each call must not turn
into a request to every backend: one check answers every caller for ``ttl`` seconds, and
callers that arrive while a check runs wait for that check instead of starting another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], Awaitable[dict[str, str | None]]]


class CachedReadiness:
    def __init__(self, check: Check, ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._result: dict[str, str | None] | None = None
        self._checked_at = 0.0

    def _fresh(self) -> dict[str, str | None] | None:
        if self._result is not None and time.monotonic() - self._checked_at < self._ttl:
            return self._result
        return None

    async def get(self) -> dict[str, str | None]:
        """Backend name -> error (``None`` when fine), at most ``ttl`` seconds old."""
        result = self._fresh()
        if result is not None:
            return result
        async with self._lock:
            result = self._fresh()  # a caller ahead of us may have just checked
            if result is None:
                result = await self._check()
                self._result, self._checked_at = result, time.monotonic()
            return result
