"""Local example retrieval: how similar each library example is to a query.

All methods score the example *queries* (not answers: we want examples whose question
looks like the user's), return one similarity per example in [0, 1], and read a query
up to :data:`MAX_QUERY_CHARS` (its start and end), so one huge message cannot stall the
proxy. An index is built once per artifact and reused on every request.

- ``bm25``: Okapi BM25 over stemmed words, divided by the best score for the query (so
  the best lexical match scores 1 and a query sharing no word with any example scores 0
  everywhere);
- ``embedding``: cosine similarity of WordLlama vectors (:mod:`prompts.embedding`);
- ``minilm``: cosine similarity of all-MiniLM-L6-v2 sentence vectors (:mod:`prompts.minilm`),
  which read words in context ("kill a process" is not "kill a person"), at a few
  milliseconds per query;
- ``hybrid``: the mean of BM25 and WordLlama, so an example must look alike in words *and* in
  meaning to rank first, and either signal alone still counts.

Which examples are then shown is decided by :mod:`prompts.selection`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import Stemmer

_TOKEN = re.compile(r"[a-z0-9]+")
# Very common words carry no signal for "which example looks like this question".
_STOPWORDS = frozenset(
    "a an the and or but if of to in on at for with by from as is are was were be been being do does did "
    "i me my you your we our it its this that these those what which who whom how why when where can could "
    "would should will shall may might must please tell give some any about into than then so not no get got".split()
)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """Lower-cased word stems without stop words.

    Stemming (Snowball, via PyStemmer's C implementation: a few microseconds per query)
    lets "steals" match "steal" and "processes" match "process": without it a request
    worded slightly differently from an example misses it entirely.
    """
    words = [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]
    # Filter again after stemming: "getting" only becomes the stop word "get" here.
    return [stem for stem in _stemmer().stemWords(words) if stem not in _STOPWORDS]


# Retrieval reads at most this many characters of a query: its first and last
# QUERY_EDGE_CHARS. Scoring runs on the proxy's event loop, and tokenizing a 5 MB message
# took ~300 ms there, stalling every other client; capped, any message costs about as much
# as an 8 KB one (BM25 ~1 ms, an embedding ~7 ms; 16 KB would cost the embedding ~35 ms).
# The edges are kept because a request usually says what it wants at the start (the
# question) or at the end (the instruction after pasted material).
QUERY_EDGE_CHARS = 4 * 1024
MAX_QUERY_CHARS = 2 * QUERY_EDGE_CHARS + 1


def bounded_query(text: str) -> str:
    """``text`` itself when short, else its first and last :data:`QUERY_EDGE_CHARS` characters."""
    if len(text) <= MAX_QUERY_CHARS:
        return text
    return text[:QUERY_EDGE_CHARS] + " " + text[-QUERY_EDGE_CHARS:]


Scores = Sequence[float] | npt.NDArray[Any]


class Scorer(Protocol):
    def scores(self, query: str) -> Scores:
        """One similarity in [0, 1] per document (a list or a numpy vector)."""
        ...


@runtime_checkable
class EncodesQueries(Protocol):
    """A scorer whose query side is one vector from a model (MiniLM).

    ``scores(q)`` equals ``scores_for(encode_queries([query_text(q)])[0])``: a server may encode
    the queries of concurrent requests together, in one forward pass and off its event loop,
    then score each against its own library. ``encoder`` names the model, so only queries for the
    same model are batched together.
    """

    encoder: str

    def query_text(self, query: str) -> str: ...

    def encode_queries(self, texts: Sequence[str]) -> npt.NDArray[Any]: ...

    def scores_for(self, vector: npt.NDArray[Any]) -> Scores: ...


class BM25Index:
    """Okapi BM25 with the usual k1/b defaults.

    Ties (including the all-zero case, when nothing overlaps) keep library order, so a
    curated library can put its most generally useful examples first.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._docs = [Counter(tokenize(d)) for d in documents]
        self._lengths = [sum(c.values()) for c in self._docs]
        n = len(self._docs)
        self._avg_len = (sum(self._lengths) / n) if n else 0.0
        df: Counter[str] = Counter()
        for counts in self._docs:
            df.update(counts.keys())
        # BM25+ style idf floor keeps very common terms from going negative.
        self._idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        # term -> [(doc index, precomputed term weight)] so scoring touches only matching docs.
        self._postings: dict[str, list[tuple[int, float]]] = {}
        for i, counts in enumerate(self._docs):
            norm = self._k1 * (1 - self._b + self._b * (self._lengths[i] / self._avg_len if self._avg_len else 0))
            for term, tf in counts.items():
                weight = self._idf[term] * tf * (self._k1 + 1) / (tf + norm)
                self._postings.setdefault(term, []).append((i, weight))

    def __len__(self) -> int:
        return len(self._docs)

    def scores(self, query: str) -> list[float]:
        result = [0.0] * len(self._docs)
        for term in set(tokenize(bounded_query(query))):
            for i, weight in self._postings.get(term, ()):
                result[i] += weight
        return result

    def top_k(self, query: str, k: int) -> list[int]:
        if k <= 0 or not self._docs:
            return []
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return order[:k]


class NormalisedBM25:
    """BM25 scores divided by the query's best score (all zeros when nothing matches)."""

    def __init__(self, documents: Sequence[str]) -> None:
        self.index = BM25Index(documents)

    def scores(self, query: str) -> list[float]:
        raw = self.index.scores(query)
        best = max(raw, default=0.0)
        return [x / best for x in raw] if best > 0 else raw


class HybridScorer:
    """The mean of normalised BM25 and embedding cosine."""

    def __init__(self, documents: Sequence[str]) -> None:
        from prompts.embedding import EmbeddingIndex

        self._lexical = NormalisedBM25(documents)
        self._semantic = EmbeddingIndex(documents)

    def scores(self, query: str) -> Scores:
        bounded = bounded_query(query)
        return (np.asarray(self._lexical.scores(bounded)) + self._semantic.scores(bounded)) / 2


def build_scorer(method: str, documents: Sequence[str]) -> Scorer:
    """The scorer for an artifact's ``retrieval.method``."""
    if method in ("bm25", "backend"):  # backend: BM25 is the fallback when embeddings are unavailable
        return NormalisedBM25(documents)
    if method == "embedding":
        from prompts.embedding import EmbeddingIndex

        return _Bounded(EmbeddingIndex(documents))
    if method == "minilm":
        return _BoundedMiniLM(documents)
    if method == "hybrid":
        return HybridScorer(documents)
    raise ValueError(f"unknown retrieval method {method!r}")


class _Bounded:
    def __init__(self, inner: Scorer) -> None:
        self._inner = inner

    def scores(self, query: str) -> Scores:
        return self._inner.scores(bounded_query(query))


class _BoundedMiniLM:
    """MiniLM similarity with the query bounded like every method's; also :class:`EncodesQueries`."""

    encoder = "minilm"

    def __init__(self, documents: Sequence[str]) -> None:
        from prompts.minilm import MiniLMIndex

        self._index = MiniLMIndex(documents)

    def scores(self, query: str) -> Scores:
        return self._index.scores(bounded_query(query))

    def query_text(self, query: str) -> str:
        return bounded_query(query)

    def encode_queries(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        from prompts.minilm import embed

        return embed(texts, edges=True)

    def scores_for(self, vector: npt.NDArray[Any]) -> Scores:
        return self._index.scores_for(vector)
