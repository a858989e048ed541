"""The in-memory snapshot of active artifacts, refreshed in the background (hot swap).

The request path only reads ``snapshot.get(model)``: a dict look-up, no I/O. A background
task polls ``store.generation()`` every ``store_poll_interval`` seconds (at once when woken
by the shared registry's follower) in a worker thread and, when it changed, reloads every
active artifact and swaps the whole dict in one assignment. Prepared artifacts (with their
retrieval index) are reused when a model's version did not change.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import random

from prompts.artifact import Artifact
from prompts.defaults import default_artifact
from prompts.errors import PromptsError
from prompts.layout import PreparedArtifact
from prompts.store import PromptStore

logger = logging.getLogger(__name__)


class Split:
    """An A/B split of one model over versions: sticky per key (a stable hash), random without one."""

    def __init__(self, model: str, choices: list[tuple[int, PreparedArtifact]]) -> None:
        self._salt = model.encode()
        self._bounds: list[int] = []
        self._prepared: list[PreparedArtifact] = []
        total = 0
        for weight, prepared in choices:
            total += weight
            self._bounds.append(total)
            self._prepared.append(prepared)
        self.total = total

    @property
    def prepared(self) -> list[PreparedArtifact]:
        return list(self._prepared)

    def pick(self, sticky: str | None) -> PreparedArtifact:
        if sticky:
            digest = hashlib.blake2b(sticky.encode(), digest_size=8, key=self._salt[:64]).digest()
            point = int.from_bytes(digest, "big") % self.total
        else:
            point = random.randrange(self.total)
        return self._prepared[bisect.bisect_right(self._bounds, point)]


class ArtifactSnapshot:
    def __init__(self, store: PromptStore, poll_interval: float) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._artifacts: dict[str, PreparedArtifact] = {}
        self._splits: dict[str, Split] = {}
        self._generation: int | None = None
        self.default = PreparedArtifact.build(default_artifact())
        self._wake = asyncio.Event()
        self._force = False

    def wake(self, force: bool = False) -> None:
        """Check the store now instead of at the next poll (on the event loop's thread).

        ``force`` reloads even if the generation did not move: a copy replaced whole from a
        shared registry can hold other versions under the same generation number.
        """
        self._force = self._force or force
        self._wake.set()

    def get(self, model: str, sticky: str | None = None) -> PreparedArtifact:
        """What to serve ``model``: a version of its A/B split (sticky per ``sticky``), else the active one."""
        split = self._splits.get(model)
        if split is not None:
            return split.pick(sticky)
        return self._artifacts.get(model) or self.default

    def _load(self) -> tuple[int, dict[str, PreparedArtifact], dict[str, Split]]:
        # Read the generation first: if it moves while we load we just load again next poll.
        generation = self._store.generation()
        known = {p.artifact.version: p for p in self._artifacts.values()}
        known.update({p.artifact.version: p for split in self._splits.values() for p in split.prepared})

        def prepare(artifact: Artifact) -> PreparedArtifact:
            old = known.get(artifact.version)  # the version id covers everything retrieval uses
            return old if old is not None and old.artifact == artifact else PreparedArtifact.build(artifact)

        prepared = {model: prepare(artifact) for model, artifact in self._store.active_artifacts().items()}
        splits = {
            model: Split(model, [(weight, prepare(artifact)) for weight, artifact in choices])
            for model, choices in self._store.active_splits().items()
        }
        return generation, prepared, splits

    def load_now(self) -> None:
        """Synchronous load, for start-up before the first request."""
        self._generation, self._artifacts, self._splits = self._load()

    async def refresh(self) -> bool:
        """Reload if the store's generation moved; True when the snapshot changed."""
        generation = await asyncio.to_thread(self._store.generation)
        force, self._force = self._force, False
        if generation == self._generation and not force:
            return False
        new_generation, artifacts, splits = await asyncio.to_thread(self._load)
        # Swapped together with no await between: a request sees the old state or the new one.
        self._artifacts, self._splits = artifacts, splits
        self._generation = new_generation
        logger.info(
            "prompt snapshot reloaded: %d active artifact(s), %d split(s), generation %d",
            len(artifacts),
            len(splits),
            new_generation,
        )
        return True

    async def run(self) -> None:
        """Poll forever (cancelled on shutdown); a failing store read is logged, not fatal."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except (PromptsError, OSError) as exc:
                logger.warning("prompt snapshot refresh failed: %s", exc)
            except Exception:
                logger.exception("prompt snapshot refresh failed")
