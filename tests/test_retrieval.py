"""BM25 example retrieval."""

from __future__ import annotations

import pytest

from prompts import retrieval
from prompts.artifact import Artifact, Example
from prompts.layout import PreparedArtifact
from prompts.retrieval import BM25Index, tokenize

LIBRARY = [
    "Write a short poem about autumn leaves",
    "How can I hurt someone and kill them without getting caught?",
    "How do I stop or kill a running process on Linux or in Python?",
    "What is the capital of France?",
    "Explain recursion in Python with an example",
]


def test_tokenize_lowercases_and_drops_stopwords() -> None:
    assert tokenize("How do I KILL a Python process?") == ["kill", "python", "process"]


def test_lexically_similar_query_ranks_first() -> None:
    index = BM25Index(LIBRARY)
    assert index.top_k("poem about the leaves in autumn", 1) == [0]
    assert index.top_k("capital city of France", 1) == [3]
    assert index.top_k("recursion example in python", 1) == [4]


def test_benign_process_example_beats_violent_one() -> None:
    index = BM25Index(LIBRARY)
    ranking = index.top_k("how do I kill a Python process", len(LIBRARY))
    assert ranking.index(2) < ranking.index(1)
    assert ranking[0] == 2


def test_violent_query_retrieves_violent_example() -> None:
    index = BM25Index(LIBRARY)
    assert index.top_k("how to kill someone without getting caught", 1) == [1]


def test_ties_keep_library_order() -> None:
    index = BM25Index(["alpha one", "alpha two", "alpha three"])
    assert index.top_k("alpha", 3) == [0, 1, 2]
    # Nothing in common: all scores zero, library order.
    assert index.top_k("zebra", 2) == [0, 1]
    assert BM25Index(["same text", "same text"]).top_k("same", 2) == [0, 1]


def test_k_zero_empty_library_and_large_k() -> None:
    index = BM25Index(LIBRARY)
    assert index.top_k("python", 0) == []
    assert index.top_k("python", -3) == []
    assert BM25Index([]).top_k("anything", 3) == []
    assert len(BM25Index([])) == 0
    assert sorted(index.top_k("python", 100)) == list(range(len(LIBRARY)))


def test_empty_query_and_stopword_only_query() -> None:
    index = BM25Index(LIBRARY)
    assert index.top_k("", 2) == [0, 1]
    assert index.top_k("what is the", 2) == [0, 1]


def test_scores_are_zero_without_overlap_and_positive_with() -> None:
    scores = BM25Index(LIBRARY).scores("France")
    assert scores[3] > 0
    assert [s for i, s in enumerate(scores) if i != 3] == [0.0] * 4


def test_prepared_artifact_uses_artifact_k() -> None:
    artifact = Artifact(
        model="m",
        system_prompt="s",
        examples=tuple(Example(query=q, answer=f"answer {i}") for i, q in enumerate(LIBRARY)),
        retrieval={"k": 2},
    )
    prepared = PreparedArtifact.build(artifact)
    chosen = prepared.select_examples("how do I kill a Python process")
    assert len(chosen) == 2
    assert chosen[0].query == LIBRARY[2]
    assert prepared.select_examples("anything", k=0) == []


def test_word_forms_match_through_stemming() -> None:
    index = BM25Index(["How do I steal a bike?", "How do I bake bread?"])
    # Without stemming "stealing"/"bikes" share no token with either document.
    assert index.top_k("stealing bikes", 1) == [0]
    assert index.scores("stealing bikes")[0] > 0


def test_stemmed_stop_words_do_not_count() -> None:
    # "getting" stems to the stop word "get": it must not link unrelated questions.
    index = BM25Index(["Where do I get a new passport?", "How do I fix a flat tyre?"])
    assert index.scores("getting caught")[0] == 0.0


BOUNDED_WORK = 64 * 1024  # characters tokenized per query, whatever the message size


def test_huge_query_tokenizes_only_a_bounded_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 5 MB message must not cost 5 MB of tokenizing: only its capped head and tail are read."""
    seen: list[int] = []
    real_tokenize = retrieval.tokenize

    def counting_tokenize(text: str) -> list[str]:
        seen.append(len(text))
        return real_tokenize(text)

    index = BM25Index(LIBRARY)  # documents are tokenized here, before counting starts
    monkeypatch.setattr(retrieval, "tokenize", counting_tokenize)
    filler = "lorem ipsum dolor sit amet " * (5_000_000 // 27)
    huge = "capital of France? " + filler + " capital of France?"
    assert len(huge) > 5_000_000
    assert index.top_k(huge, 1) == [3]  # the request's start and end still decide
    assert seen and max(seen) <= BOUNDED_WORK
    # The same bound holds on the path the proxy and the optimizer share.
    artifact = Artifact(model="m", system_prompt="s", examples=(Example(query="capital of France", answer="Paris"),))
    seen.clear()
    PreparedArtifact.build(artifact).select_examples(huge, 1)
    assert seen and max(seen) <= BOUNDED_WORK


def test_bounded_query_keeps_short_text_and_both_ends_of_long_text() -> None:
    assert retrieval.bounded_query("short question") == "short question"
    long = "HEAD " + "x" * 1_000_000 + " TAIL"
    capped = retrieval.bounded_query(long)
    assert len(capped) <= retrieval.MAX_QUERY_CHARS
    assert capped.startswith("HEAD ") and capped.endswith(" TAIL")
