"""Slows down key guessing on the admin API and the dashboard login.

After ``limit`` failed attempts from one client address within ``window`` seconds, that address is
refused (429 with ``Retry-After``) without its key being checked, until the oldest failure in the
window ages out. A correct key clears the address's record. Memory is bounded: at most
``max_clients`` addresses are tracked, the least recently failing dropped first.

Addresses are what the ASGI server reports; behind a load balancer that is the balancer's own
address, so one guesser can hold the admin surface shut for everybody behind it for ``window``
seconds. That trade (availability of admin for a minute against an unthrottled guess rate) is
deliberate; ``DRPO_AUTH_FAILURE_LIMIT=0`` turns the throttle off.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 10
DEFAULT_WINDOW_S = 60.0


class TooManyGuesses(Exception):
    """The address made too many wrong guesses; ``retry_after`` whole seconds until it may try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many wrong keys; retry in {retry_after} s")
        self.retry_after = retry_after


class AuthThrottle:
    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # Sync FastAPI dependencies run in a thread pool, async handlers on the loop: guard both.
        self._lock = threading.Lock()

    def check(self, peer: tuple[str, int] | None, accept: Callable[[], T | None]) -> T | None:
        """``accept()`` (what a key opens, None for a wrong key), counted for ``peer``'s address.

        Raises :class:`TooManyGuesses` without calling ``accept`` while the address is blocked."""
        client = client_address(peer)
        wait = self.retry_after(client)
        if wait:
            raise TooManyGuesses(wait)
        accepted = accept()
        if accepted is None:
            self.failed(client)
        else:
            self.succeeded(client)
        return accepted

    def retry_after(self, client: str) -> int:
        """Whole seconds until ``client`` may try again; 0 when it may try now."""
        if self.limit <= 0:
            return 0
        with self._lock:
            recent = self._recent(client)
            if recent is None or len(recent) < self.limit:
                return 0
            return max(1, math.ceil(recent[0] + self.window - self._clock()))

    def failed(self, client: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            recent = self._recent(client) or deque()
            recent.append(self._clock())
            while len(recent) > self.limit:
                recent.popleft()
            self._failures[client] = recent
            self._failures.move_to_end(client)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        recent = self._failures.get(client)
        if recent is None:
            return None
        horizon = self._clock() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[client]
            return None
        return recent


def client_address(peer: tuple[str, int] | None) -> str:
    """The key a request is throttled under: its peer's host ("unknown" when the server gives none)."""
    return peer[0] if peer else "unknown"
