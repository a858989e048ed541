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

from prompts.artifact import ExampleLabel, RetrievalSettings


def refusal_weight(scores: Sequence[float], labels: Sequence[ExampleLabel | None], neighbours: int) -> float:
    """The refusals' share of the similarity weight among the nearest ``neighbours`` (0..1)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:neighbours]
    total = sum(max(scores[i], 0.0) for i in order)
    if total <= 0:
        return 0.0
    return sum(max(scores[i], 0.0) for i in order if labels[i] == "refusal") / total


def select(
    scores: Sequence[float],
    labels: Sequence[ExampleLabel | None],
    k: int,
    settings: RetrievalSettings,
) -> list[int]:
    if k <= 0 or not scores:
        return []
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if all(label is None for label in labels):
        return order[:k]
    if scores[order[0]] <= settings.min_similarity:
        general = [i for i in order if labels[i] == "general"]
        fallback = general or [i for i in order if labels[i] != "refusal"]
        return fallback[:k]
    refuse = refusal_weight(scores, labels, settings.neighbours) >= settings.refusal_share
    return [i for i in order if (labels[i] == "refusal") == refuse][:k]
