"""The optimizer's retry backoff: full jitter (no lockstep after a 429), Retry-After honoured.

Deterministic: the client takes a seeded ``random.Random`` and a recording ``sleep``.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from optimizer.errors import LLMCallError, TransientLLMError
from optimizer.llm import MAX_BACKOFF, Completion, Endpoint, LLMClient, backoff_delay
from optimizer.openai_transport import retry_after_seconds

ENDPOINT = Endpoint("target", "http://backend/v1", "m")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyTransport:
    """Fails each request ``failures`` times (with the given Retry-After), then answers."""

    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.seen: dict[str, int] = {}

    async def create(self, endpoint: Endpoint, kind: Any, body: dict[str, Any]) -> Completion:
        key = body["messages"][0]["content"]
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.failures:
            raise TransientLLMError("HTTP 429", self.retry_after)
        return Completion("ok", 1, 1)

    async def model_owners(self, endpoint: Endpoint) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


def _client(transport: FlakyTransport, sleeps: list[float], seed: int = 7, **options: Any) -> LLMClient:
    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    return LLMClient(transport, concurrency=16, sleep=record, rng=random.Random(seed), **options)


def _body(i: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}


@pytest.mark.anyio
async def test_calls_that_fail_together_do_not_retry_together() -> None:
    sleeps: list[float] = []
    client = _client(FlakyTransport(failures=1), sleeps, backoff_base=1.0)
    await asyncio.gather(*(client.generate(ENDPOINT, "chat", _body(i)) for i in range(16)))
    assert len(sleeps) == 16
    assert all(0.0 <= s <= 1.0 for s in sleeps)  # first retry: uniform in [0, base]
    assert len({round(s, 6) for s in sleeps}) == 16  # spread, not one shared delay
    assert max(sleeps) - min(sleeps) > 0.5


@pytest.mark.anyio
async def test_the_jitter_window_doubles_per_attempt_up_to_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        window = min(MAX_BACKOFF, 0.5 * 2**attempt)
        draws = [backoff_delay(attempt, 0.5, None, rng) for _ in range(200)]
        assert all(0.0 <= d <= window for d in draws)
        assert max(draws) > 0.8 * window  # the whole window is used
    sleeps: list[float] = []
    with pytest.raises(LLMCallError):
        await _client(FlakyTransport(failures=99), sleeps, max_attempts=4).generate(ENDPOINT, "chat", _body(0))
    assert len(sleeps) == 3


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [backoff_delay(a, 0.5, None, random.Random(3)) for a in range(5)]
    again = [backoff_delay(a, 0.5, None, random.Random(3)) for a in range(5)]
    assert first == again


@pytest.mark.anyio
async def test_retry_after_is_a_lower_bound() -> None:
    sleeps: list[float] = []
    client = _client(FlakyTransport(failures=1, retry_after=4.0), sleeps, backoff_base=0.5)
    await asyncio.gather(*(client.generate(ENDPOINT, "chat", _body(i)) for i in range(8)))
    assert all(4.0 <= s <= 4.5 for s in sleeps)
    assert len({round(s, 6) for s in sleeps}) == 8
    assert backoff_delay(0, 0.5, 0.0, random.Random(0)) == 0.0  # Retry-After: 0 means now
    assert backoff_delay(0, 0.5, 10_000.0, random.Random(0)) <= 120.5  # a silly value is capped


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0
    assert retry_after_seconds("-3") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad) is None


def test_a_requested_stop_ends_the_budget_like_a_spent_one() -> None:
    from optimizer.llm import Budget, BudgetExceeded, Counters

    budget = Budget()
    budget.check(Counters(), 0)
    budget.request_stop("stopped by SIGTERM")
    with pytest.raises(BudgetExceeded, match="SIGTERM"):
        budget.check(Counters(), 0)
