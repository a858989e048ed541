"""Semantic similarity with WordLlama: static word embeddings whose weights ship in the wheel.

Why WordLlama: it installs from the package index *with* its 256-dimensional weights and
tokenizer, runs on the CPU without a model hub, and embeds a short query in well under a
tenth of a millisecond, so it can sit on the proxy's request path. (The contextual encoder
in :mod:`prompts.minilm` understands more but costs milliseconds per query.)

Its loader looks for the bundled tokenizer in the wrong folder and would then try the
network, so it is loaded with ``cache_dir`` set to the package's own directory and
``disable_download=True``. The model is loaded once per process, lazily, on first use
(about 0.3 s), never at import time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from prompts.errors import PromptsError

_lock = threading.Lock()
_model: Any = None

Vectors = npt.NDArray[np.float32]


class EmbeddingUnavailable(PromptsError):
    """The embedding model could not be loaded (package missing or broken)."""


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            root = logging.getLogger()
            handlers, level = list(root.handlers), root.level
            try:
                import wordllama
            except ImportError as exc:  # pragma: no cover - wordllama is a core dependency
                raise EmbeddingUnavailable("retrieval method 'embedding' needs the wordllama package") from exc
            finally:
                # wordllama calls logging.basicConfig(level=INFO) when imported, which would turn
                # on every library's INFO logs (request URLs...) in our processes: undo that.
                for handler in root.handlers[:]:
                    if handler not in handlers:
                        root.removeHandler(handler)
                root.setLevel(level)
            package_dir = Path(wordllama.__file__).resolve().parent
            try:
                _model = wordllama.WordLlama.load(cache_dir=package_dir, disable_download=True)
            except Exception as exc:  # its loader raises several types; all mean the same to us
                raise EmbeddingUnavailable(f"cannot load the bundled WordLlama model: {exc}") from exc
        return _model


def embed(texts: Sequence[str]) -> Vectors:
    """Unit-length vectors, one row per text."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.asarray(_load().embed(list(texts), norm=True), dtype=np.float32)
    return vectors


class EmbeddingIndex:
    """Cosine similarity of a query to every document, clipped to [0, 1]."""

    def __init__(self, documents: Sequence[str]) -> None:
        self._matrix = embed(documents)

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def scores(self, query: str) -> Vectors:
        """One cosine similarity per document, clipped to [0, 1] (a numpy vector)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float32)
        vector = embed([query])[0]
        sims: Vectors = np.clip(self._matrix @ vector, 0.0, 1.0)
        return sims
