"""The in-memory snapshot of active artifacts, refreshed in the background (hot swap).

The request path only reads ``snapshot.get(model)``: a dict look-up, no I/O. A background
task polls ``store.generation()`` every ``store_poll_interval`` seconds in a worker thread
and, when it changed, reloads every active artifact and swaps the whole dict in one
assignment. Prepared artifacts (with their retrieval index) are reused when a model's
version did not change.
"""

from __future__ import annotations

import asyncio
import logging

from prompts.defaults import default_artifact
from prompts.errors import PromptsError
from prompts.layout import PreparedArtifact
from prompts.store import PromptStore

logger = logging.getLogger(__name__)


class ArtifactSnapshot:
    def __init__(self, store: PromptStore, poll_interval: float) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._artifacts: dict[str, PreparedArtifact] = {}
        self._generation: int | None = None
        self.default = PreparedArtifact.build(default_artifact())

    def get(self, model: str) -> PreparedArtifact:
        return self._artifacts.get(model) or self.default

    def _load(self) -> tuple[int, dict[str, PreparedArtifact]]:
        # Read the generation first: if it moves while we load we just load again next poll.
        generation = self._store.generation()
        active = self._store.active_artifacts()
        current = self._artifacts
        prepared = {}
        for model, artifact in active.items():
            old = current.get(model)
            same = old is not None and old.artifact.version == artifact.version
            prepared[model] = old if (same and old is not None) else PreparedArtifact.build(artifact)
        return generation, prepared

    def load_now(self) -> None:
        """Synchronous load, for start-up before the first request."""
        self._generation, self._artifacts = self._load()

    async def refresh(self) -> bool:
        """Reload if the store's generation moved; True when the snapshot changed."""
        generation = await asyncio.to_thread(self._store.generation)
        if generation == self._generation:
            return False
        new_generation, artifacts = await asyncio.to_thread(self._load)
        self._artifacts = artifacts
        self._generation = new_generation
        logger.info("prompt snapshot reloaded: %d active artifact(s), generation %d", len(artifacts), new_generation)
        return True

    async def run(self) -> None:
        """Poll forever (cancelled on shutdown); a failing store read is logged, not fatal."""
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.refresh()
            except (PromptsError, OSError) as exc:
                logger.warning("prompt snapshot refresh failed: %s", exc)
            except Exception:
                logger.exception("prompt snapshot refresh failed")
