"""What resuming after a kill costs: answered calls are never sent again; the calls in flight
at the kill (at most ``--concurrency``) are, because their answers never arrived."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from optimizer.llm import Completion, Endpoint, Kind
from tests.fakes_llm import ScriptedLLM
from tests.test_optimizer_search import make_config, run

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


@dataclass
class AnswersThenHangs(ScriptedLLM):
    """Answers the first ``answered_limit`` calls; every later call hangs until cancelled."""

    answered_limit: int = 0
    answered: list[str] = field(default_factory=list)
    hanging: list[str] = field(default_factory=list)

    async def create(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion:
        if len(self.answered) < self.answered_limit:
            self.answered.append(_key(body))
            return await super().create(endpoint, kind, body)
        self.hanging.append(_key(body))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def _kill_when_saturated(tmp_path: Path, fake: AnswersThenHangs, concurrency: int) -> None:
    """Run until ``concurrency`` calls hang in flight, then stop the run abruptly."""
    task = asyncio.create_task(run(tmp_path, fake, make_config(concurrency=concurrency)))
    for _ in range(2000):
        if len(fake.hanging) >= concurrency or task.done():
            break
        await asyncio.sleep(0.01)
    assert len(fake.hanging) == concurrency, "the run never had a full set of calls in flight"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_resume_resends_exactly_the_calls_in_flight_at_the_kill(tmp_path: Path, concurrency: int) -> None:
    killed = AnswersThenHangs(answered_limit=5)
    await _kill_when_saturated(tmp_path, killed, concurrency)

    resumed = ScriptedLLM()
    outcome = await run(tmp_path, resumed, make_config(concurrency=concurrency), resume=True)
    assert outcome.state.status == "done"
    sent_again = {_key(c.body) for c in resumed.calls} & {*killed.answered, *killed.hanging}
    assert sent_again == set(killed.hanging)
    assert len(sent_again) <= concurrency
