"""Label-aware example selection, the retrieval methods, and version-id stability."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompts.artifact import Artifact, Example, ExampleLabel, RetrievalSettings
from prompts.embedding import EmbeddingIndex, embed
from prompts.layout import PreparedArtifact, build_chat_messages
from prompts.retrieval import MAX_QUERY_CHARS, build_scorer
from prompts.selection import refusal_weight, select

SETTINGS = RetrievalSettings(k=2, neighbours=3, refusal_share=0.5, min_similarity=0.1)
LABELS: list[ExampleLabel | None] = ["refusal", "refusal", "helpful", "helpful", "general", "general"]


def test_unlabelled_libraries_rank_by_similarity_with_library_order_on_ties() -> None:
    assert select([0.1, 0.9, 0.5, 0.9], [None] * 4, 3, SETTINGS) == [1, 3, 2]


def test_a_refusal_majority_gets_a_block_of_refusals() -> None:
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.1]
    assert refusal_weight(scores, LABELS, 3) == pytest.approx(1.7 / 2.4)
    assert select(scores, LABELS, 2, SETTINGS) == [0, 1]


def test_a_helpful_majority_gets_no_refusal_at_all() -> None:
    # The single most similar example is a refusal, but the neighbourhood is helpful.
    scores = [0.9, 0.1, 0.85, 0.8, 0.3, 0.2]
    assert select(scores, LABELS, 2, SETTINGS) == [2, 3]


def test_no_real_match_gets_general_examples_not_library_order() -> None:
    scores = [0.05, 0.0, 0.02, 0.01, 0.0, 0.03]
    assert select(scores, LABELS, 2, SETTINGS) == [5, 4]


@given(st.lists(st.floats(0, 1), min_size=6, max_size=6), st.integers(1, 4))
def test_a_block_is_never_mixed(scores: list[float], k: int) -> None:
    chosen = select(scores, LABELS, k, SETTINGS)
    kinds = {LABELS[i] == "refusal" for i in chosen}
    # Pool sizes: 2 refusals; 4 helpful + general; only the 2 general ones when nothing is similar.
    nothing_similar = max(scores) <= SETTINGS.min_similarity
    pool = 2 if True in kinds or nothing_similar else 4
    assert len(kinds) <= 1 and len(chosen) == min(k, pool)
    if nothing_similar:
        assert all(LABELS[i] == "general" for i in chosen)


def test_new_retrieval_fields_at_their_defaults_keep_version_ids() -> None:
    # The id of this artifact under schema 1 before labels and selection settings existed.
    artifact = Artifact(model="m", system_prompt="s", examples=(Example(query="q", answer="a"),))
    assert artifact.version == Artifact.model_validate(artifact.model_dump()).version
    labelled = artifact.with_changes(examples=(Example(query="q", answer="a", label="refusal"),))
    tuned = artifact.with_changes(retrieval=RetrievalSettings(refusal_share=0.6))
    assert len({artifact.version, labelled.version, tuned.version}) == 3


def test_embedding_similarity_understands_paraphrases_offline() -> None:
    index = EmbeddingIndex(["How do I bake sourdough bread?", "How do I change a flat bicycle tyre?"])
    bread, tyre = index.scores("What is the recipe for a sourdough loaf?")
    assert bread > tyre
    assert embed(["x"]).shape == (1, 256)


@pytest.mark.parametrize("method", ["bm25", "embedding", "hybrid"])
def test_every_method_scores_in_unit_range_and_reads_a_bounded_query(method: str) -> None:
    scorer = build_scorer(method, ["kill a stuck process", "bake bread", "write a poem"])
    for query in ("how to kill a process", "zzzz", "bread " * (MAX_QUERY_CHARS // 3)):
        scores = scorer.scores(query)
        assert len(scores) == 3 and all(0.0 <= s <= 1.0 + 1e-6 for s in scores)
    started = time.process_time()
    scorer.scores("x" * 5_000_000)
    assert time.process_time() - started < 2.0  # bounded: a 5 MB message is read at its edges only


def test_prepared_artifacts_use_the_method_and_labels_in_the_served_layout() -> None:
    artifact = Artifact(
        model="m",
        system_prompt="Be safe.",
        examples=(
            Example(
                query="How do I poison a person without being caught?",
                answer="I can't help with that.",
                label="refusal",
            ),
            Example(query="How do I hurt someone with poison?", answer="I can't help with that.", label="refusal"),
            Example(query="How do I kill a frozen program?", answer="Use the task manager.", label="helpful"),
            Example(query="What is a good bread recipe?", answer="Flour, water, salt, yeast.", label="general"),
        ),
        retrieval=RetrievalSettings(k=2, method="hybrid", neighbours=3, min_similarity=0.05),
    )
    prepared = PreparedArtifact.build(artifact)
    harmful = build_chat_messages(prepared, [{"role": "user", "content": "How can I poison my neighbour?"}])
    assert [m["content"] for m in harmful[2:5:2]] == ["I can't help with that."] * 2
    benign = build_chat_messages(prepared, [{"role": "user", "content": "How do I kill a program that froze?"}])
    assert "I can't help with that." not in [m["content"] for m in benign]


def test_loading_the_embedding_model_leaves_logging_alone() -> None:
    import logging
    import subprocess
    import sys

    code = (
        "import logging; from prompts.embedding import embed; embed(['x']); "
        "root = logging.getLogger(); print(len(root.handlers), root.level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", str(logging.WARNING)]
