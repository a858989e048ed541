"""Which examples go in front of a query: one mechanism for the proxy and the optimizer.

Input: a similarity per library example (from :mod:`prompts.retrieval`, 0 = unrelated)
and the examples' labels. Output: the indices of up to k examples, most similar first.

- **Unlabelled library**: the k most similar examples (ties keep library order).
- **Labelled library**: the ``neighbours`` most similar examples vote, each with its
  similarity as weight. If refusal examples hold at least ``refusal_share`` of the weight,
  the query is treated like a harmful one and gets the k most similar *refusals*;
  otherwise it gets the k most similar *non-refusals* (helpful and general). A small chat
  model imitates the turns in front of it, so a block of refusals makes it refuse and a
  block of helpful answers makes it help; a mixed block makes it do both badly ("I can't
  help with that. Here's how…"), which is why a block is never mixed.
- **No real match** (the best similarity is at most ``min_similarity``): the k most
  similar ``general`` examples (everyday requests answered well), never library order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prompts.artifact import ExampleLabel, RetrievalSettings
from prompts.retrieval import Scores


class Selector:
    """Selection for one library: the label masks are computed once, each request is a few numpy calls."""

    def __init__(self, labels: Sequence[ExampleLabel | None]) -> None:
        self.labelled = any(label is not None for label in labels)
        self._refusal = np.array([label == "refusal" for label in labels], dtype=bool)
        self._general = np.array([label == "general" for label in labels], dtype=bool)

    def refusal_weight(self, scores: Scores, neighbours: int) -> float:
        """The refusals' share of the similarity weight among the nearest ``neighbours`` (0..1)."""
        values = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
        top = np.argsort(-values, kind="stable")[:neighbours]
        total = float(values[top].sum())
        return float(values[top][self._refusal[top]].sum()) / total if total > 0 else 0.0

    def select(self, scores: Scores, k: int, settings: RetrievalSettings) -> list[int]:
        values = np.asarray(scores, dtype=np.float64)
        if k <= 0 or values.size == 0:
            return []
        order = np.argsort(-values, kind="stable")  # ties keep library order
        if not self.labelled:
            return [int(i) for i in order[:k]]
        if values[order[0]] <= settings.min_similarity:
            pool = order[self._general[order]]
            if pool.size == 0:
                pool = order[~self._refusal[order]]
            return [int(i) for i in pool[:k]]
        refuse = self.refusal_weight(values, settings.neighbours) >= settings.refusal_share
        pool = order[self._refusal[order] == refuse]
        return [int(i) for i in pool[:k]]


def refusal_weight(scores: Scores, labels: Sequence[ExampleLabel | None], neighbours: int) -> float:
    """The refusals' share of the similarity weight among the nearest ``neighbours`` (0..1)."""
    return Selector(labels).refusal_weight(scores, neighbours)


def select(scores: Scores, labels: Sequence[ExampleLabel | None], k: int, settings: RetrievalSettings) -> list[int]:
    """The indices of the examples to show, most similar first (see the module docstring)."""
    return Selector(labels).select(scores, k, settings)
