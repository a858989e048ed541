"""Hot swap under load: continuous concurrent requests, streaming and not, through the proxy while
versions are activated, rolled back and A/B weights changed 100 times. No request may fail, every
response must carry a version that the proxy's snapshot held when the request started (or one that
replaced it while the request was being picked), the prompt the backend saw must be that version's,
and each change must reach the snapshot within 2 s.

When the snapshot swapped is read from the proxy's own "snapshot reloaded" log line, not guessed
from a fixed lag: on a loaded two-core machine a poll can run late, and a fixed allowance made this
test flaky without telling us anything about correctness.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from prompts.artifact import Artifact
from prompts.store import PromptStore
from tests.fakes.fake_backend import chat_chunks, chat_completion
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy
from tests.fakes.server_thread import ServerThread

MODEL = "fake-model"
CHANGES = 100
VISIBLE_WITHIN = 2.0
POLL_INTERVAL = 0.1
TAG = re.compile(r"TAG-\d+")


async def echo_backend(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the TAG-n found in the system prompt it was sent (streamed when asked)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/models"):
        body = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    request = orjson.loads(raw)
    system = " ".join(str(m["content"]) for m in request["messages"] if m["role"] == "system")
    found = TAG.search(system)
    tag = found.group(0) if found else "none"
    if not request.get("stream"):
        body = orjson.dumps(chat_completion(tag))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for event in [*chat_chunks([tag[:4], tag[4:]]), "[DONE]"]:
        data = event if isinstance(event, str) else orjson.dumps(event).decode()
        await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    version: str | None
    tag: str
    stream: bool
    complete: bool


class Timeline:
    """What the store held from when: (time, generation, versions servable) after each change."""

    def __init__(self) -> None:
        self.states: list[tuple[float, int, frozenset[str]]] = []
        self.lock = threading.Lock()

    def record(self, written_from: float, generation: int, versions: frozenset[str]) -> None:
        """``written_from``: taken before the write, so a request can never predate its entry."""
        with self.lock:
            self.states.append((written_from, generation, versions))

    def servable(self, snapshot_generation: int, until: float) -> set[str]:
        """Versions a request may get when the snapshot held ``snapshot_generation`` as it started
        and the request ended at ``until``: that state and any written before the request ended
        (a reload can land while the request is on its way to being picked)."""
        with self.lock:
            # A write that changed nothing keeps the generation: the last such entry before the
            # request ended stands for that state.
            base = max(
                i
                for i, (at, generation, _) in enumerate(self.states)
                if generation <= snapshot_generation and at <= until
            )
            out: set[str] = set()
            for at, _, versions in self.states[base:]:
                if at <= until:
                    out |= versions
            return out


class Reloads(logging.Handler):
    """Records when the proxy's snapshot swapped in which store generation (from its log line).

    The swap and its log line run on the event loop's thread with no await between, so no request
    can be picked between them: a request started after the line was logged saw that generation.
    """

    def __init__(self, initial_generation: int) -> None:
        super().__init__(logging.INFO)
        self.swaps: list[tuple[float, int]] = [(float("-inf"), initial_generation)]
        self._swaps_lock = threading.Lock()  # not ``lock``: that is the Handler's own

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("prompt snapshot reloaded") and isinstance(record.args, tuple):
            with self._swaps_lock:
                self.swaps.append((time.monotonic(), int(str(record.args[-1]))))

    def generation_at(self, moment: float) -> int:
        with self._swaps_lock:
            return max(generation for at, generation in self.swaps if at <= moment)

    def latest(self) -> int:
        with self._swaps_lock:
            return self.swaps[-1][1]


@pytest.fixture
def versions(tmp_path: Path) -> list[Artifact]:
    artifacts = [make_artifact(MODEL, f"Answer as assistant TAG-{n}.") for n in range(5)]
    with PromptStore(tmp_path / "store") as store:
        for artifact in artifacts:
            store.put(artifact)
        store.activate(MODEL, artifacts[0].version)
    return artifacts


@pytest.fixture
def backend() -> Iterator[str]:
    with ServerThread(echo_backend) as server:
        yield server.url + "/v1"


def _served_state(store: PromptStore) -> frozenset[str]:
    split = store.split(MODEL)
    return frozenset(split) if split else frozenset({store.active_version(MODEL) or ""})


def _one_request(client: httpx.Client, base: str, n: int) -> Outcome:
    stream = n % 2 == 0
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"hello {n}"}], "stream": stream}
    headers = {"x-drpo-session": f"user-{n % 17}"}
    started = time.monotonic()
    if not stream:
        response = client.post(base + "/v1/chat/completions", json=body, headers=headers)
        tag = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else ""
        version = response.headers.get("x-drpo-prompt-version")
        return Outcome(started, time.monotonic(), response.status_code, version, tag, False, True)
    with client.stream("POST", base + "/v1/chat/completions", json=body, headers=headers) as response:
        text, done = "", False
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = orjson.loads(line[6:])
                text += "".join(c["delta"].get("content") or "" for c in event.get("choices", []))
        version = response.headers.get("x-drpo-prompt-version")
        return Outcome(started, time.monotonic(), response.status_code, version, text, True, done)


def test_a_hundred_changes_under_load_fail_no_request(tmp_path: Path, versions: list[Artifact], backend: str) -> None:
    tag_of = {a.version: TAG.search(a.system_prompt).group(0) for a in versions}  # type: ignore[union-attr]
    settings = make_settings(tmp_path, backend, store_poll_interval=POLL_INTERVAL)
    timeline = Timeline()
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    snapshot_logger = logging.getLogger("proxy.snapshot")
    with PromptStore(tmp_path / "store", actor="cli:test") as store:
        reloads = Reloads(store.generation())
    snapshot_logger.addHandler(reloads)
    previous_level = snapshot_logger.level
    snapshot_logger.setLevel(logging.INFO)
    try:
        _run_load(settings, tmp_path, versions, timeline, reloads, outcomes, errors)
    finally:
        snapshot_logger.removeHandler(reloads)
        snapshot_logger.setLevel(previous_level)

    assert not errors, errors[:3]
    assert len(outcomes) > 200, "the load was too light to prove anything"
    assert {o.stream for o in outcomes} == {True, False}
    failed = [o for o in outcomes if o.status != 200 or not o.complete]
    assert not failed, failed[:3]
    for outcome in outcomes:
        assert outcome.version is not None
        allowed = timeline.servable(reloads.generation_at(outcome.started), outcome.ended)
        assert outcome.version in allowed, (outcome, allowed)
        assert outcome.tag == tag_of[outcome.version]  # the backend saw that version's prompt


def _run_load(
    settings: Any,
    tmp_path: Path,
    versions: list[Artifact],
    timeline: Timeline,
    reloads: Reloads,
    outcomes: list[Outcome],
    errors: list[BaseException],
) -> None:
    """Eight clients in a loop while the main thread makes 100 changes, each seen within 2 s."""
    stop = threading.Event()
    with running_proxy(settings) as base, PromptStore(tmp_path / "store", actor="cli:test") as store:
        timeline.record(time.monotonic(), store.generation(), _served_state(store))

        def load(worker: int) -> None:
            n = worker
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        outcomes.append(_one_request(client, base, n))
                    except BaseException as exc:  # any transport error is a failed request
                        errors.append(exc)
                    n += 8

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
        for thread in threads:
            thread.start()

        def record_after(step: Any, *args: Any) -> None:
            written_from = time.monotonic()
            step(MODEL, *args)
            timeline.record(written_from, store.generation(), _served_state(store))

        def change(i: int) -> None:
            a, b, c = (versions[(i + k) % len(versions)].version for k in range(3))
            kind = i % 5
            if kind == 0:
                record_after(store.clear_split)
                record_after(store.activate, a)
            elif kind == 1:
                record_after(store.set_split, {a: 90, b: 10})
            elif kind == 2:
                record_after(store.set_split, {b: 50, c: 50})
            elif kind == 3:
                record_after(store.set_split, {c: 1})  # versions removed from a split: no request may fail
            else:
                record_after(store.clear_split)
                record_after(store.activate, c)
                record_after(store.rollback)

        probe = httpx.Client(timeout=10)
        for i in range(CHANGES):
            change(i)
            target, state = store.generation(), _served_state(store)
            changed_at = time.monotonic()
            # Within 2 s the snapshot holds this change, and a fresh request is served from it.
            while reloads.latest() < target:
                assert time.monotonic() - changed_at < VISIBLE_WITHIN, f"change {i} not in the snapshot within 2 s"
                time.sleep(0.01)
            seen = _one_request(probe, base, 1000 + i)
            assert seen.version in state, (i, seen, state)
        probe.close()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
