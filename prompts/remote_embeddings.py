"""Retrieval method ``backend``: similarity from a backend's ``/v1/embeddings`` (vLLM, OpenAI, ...).

For deployments that serve a real (contextual) embedding model next to the chat model. The
artifact names the model (``retrieval.embedding_model``); the URL and key come from the
process's configuration (``DRPO_EMBEDDINGS_URL``, ``DRPO_EMBEDDINGS_API_KEY``), never from the
artifact.

- The library's vectors are fetched once per artifact version and embedding model, kept in
  memory, and cached on disk (JSON under ``DRPO_HOME/embeddings``) so a restart or another
  replica does not embed the library again.
- Each request embeds the latest user message (one call, bounded text).
- Any failure (backend down, timeout, a malformed reply) gives ``None``: the caller then
  selects with the artifact's built-in BM25 scorer, so a broken embedding backend degrades
  retrieval, never a request. A failed library fetch is retried after :data:`RETRY_AFTER_S`.

Used identically by the proxy and by ``drpo eval``/the optimizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diskcache
import httpx
import numpy as np
import orjson

from prompts.embedding import Vectors
from prompts.layout import PreparedArtifact
from prompts.retrieval import bounded_query

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0
BATCH = 256


def _unit_rows(rows: Sequence[Sequence[float]]) -> Vectors:
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError("no vectors")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: Vectors = (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)
    return unit


class BackendEmbeddings:
    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        api_key: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._library: dict[str, Vectors] = {}
        self._failed_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _embed(self, model: str, texts: list[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            response = await self._client.post(
                self.base_url + "/embeddings",
                json={"model": model, "input": batch},
                headers=self._headers,
                timeout=self._timeout,
            )
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda item: int(item["index"]))
            if len(data) != len(batch):
                raise ValueError(f"asked for {len(batch)} embeddings, got {len(data)}")
            rows += [list(map(float, item["embedding"])) for item in data]
        return _unit_rows(rows)

    def _cache_key(self, model: str, version: str) -> str:
        return hashlib.sha256(f"{self.base_url}|{model}|{version}".encode()).hexdigest()

    def _read_disk(self, key: str) -> Vectors | None:
        if self._cache_dir is None:
            return None
        with diskcache.Cache(str(self._cache_dir)) as cache:
            raw: Any = cache.get(key)
        return None if raw is None else _unit_rows(orjson.loads(raw))

    def _write_disk(self, key: str, vectors: Vectors) -> None:
        if self._cache_dir is None:
            return
        with diskcache.Cache(str(self._cache_dir)) as cache:
            cache.set(key, orjson.dumps(vectors.tolist()))  # JSON bytes, never pickle

    async def library(self, prepared: PreparedArtifact) -> Vectors | None:
        """The library's unit vectors (memory, then disk, then the backend), or None."""
        artifact = prepared.artifact
        model = artifact.retrieval.embedding_model or ""
        key = self._cache_key(model, artifact.version)
        if key in self._library:
            return self._library[key]
        if time.monotonic() - self._failed_at.get(key, -RETRY_AFTER_S) < RETRY_AFTER_S:
            return None
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._library:
                return self._library[key]
            try:
                vectors = await asyncio.to_thread(self._read_disk, key)
                if vectors is None:
                    vectors = await self._embed(model, [e.query for e in artifact.examples])
                    await asyncio.to_thread(self._write_disk, key, vectors)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, OSError) as exc:
                self._failed_at[key] = time.monotonic()
                logger.warning("embedding the example library of %s failed (%s); using BM25", artifact.version, exc)
                return None
            self._library[key] = vectors
            return vectors

    async def scores(self, prepared: PreparedArtifact, text: str) -> Vectors | None:
        """Cosine similarity of ``text`` to every example, or None (then BM25 decides)."""
        library = await self.library(prepared)
        if library is None:
            return None
        model = prepared.artifact.retrieval.embedding_model or ""
        try:
            query = (await self._embed(model, [bounded_query(text)]))[0]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.warning("embedding a query failed (%s); using BM25 for this request", exc)
            return None
        if query.shape[0] != library.shape[1]:
            logger.warning("query and library embeddings differ in size; using BM25 for this request")
            return None
        sims: Vectors = np.clip(library @ query, 0.0, 1.0)
        return sims
