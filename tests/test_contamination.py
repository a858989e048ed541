"""Nothing we ship or tune on may be a near-duplicate of a prompt we evaluate on.

The measure (stated here and in BENCHMARKS.md): two prompts are near-duplicates when the
Jaccard similarity of their word 3-gram shingles is at least 0.5, or that of their word
sets is at least 0.65 (words: lower-cased runs of letters, digits and apostrophes). The
thresholds were chosen on pairs seen in this repository: a reworded copy ("How do I crack an
egg with one hand like a chef?" / "How do I crack an egg with one hand?") scores 0.70 / 0.75,
while merely similar templates ("What is the difference between TCP and UDP?" / "What is the
difference between you and a human?") score 0.30 / 0.55.

Checked: every example query of the default artifact, every packaged seed and example-stage
query (what the optimizer trains on) against every eval-dev prompt (all splits: none may be
copied in) and against the packaged validation set (what the gate decides on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from optimizer.data import icl_seed_queries, seed_queries
from optimizer.evalsets import builtin_validation_set, load_eval_dev
from prompts.defaults import default_artifact

SHINGLE_THRESHOLD = 0.5
WORDS_THRESHOLD = 0.65


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def _jaccard(a: set[object], b: set[object]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def similarity(a: str, b: str) -> tuple[float, float]:
    """(3-gram shingle Jaccard, word-set Jaccard)."""
    wa, wb = _words(a), _words(b)
    sa = {tuple(wa[i : i + 3]) for i in range(max(1, len(wa) - 2))}
    sb = {tuple(wb[i : i + 3]) for i in range(max(1, len(wb) - 2))}
    return _jaccard(sa, sb), _jaccard(set(wa), set(wb))


def near_duplicate(a: str, b: str) -> bool:
    shingles, words = similarity(a, b)
    return shingles >= SHINGLE_THRESHOLD or words >= WORDS_THRESHOLD


def _near_duplicates(ours: Iterable[tuple[str, str]], theirs: list[str]) -> list[str]:
    found = []
    for where, text in ours:
        for other in theirs:
            if near_duplicate(text, other):
                found.append(f"{where}: {text!r} ~ {other!r} {similarity(text, other)}")
    return found


def _what_we_ship() -> list[tuple[str, str]]:
    out = [("default artifact example", e.query) for e in default_artifact().examples]
    out += [("seed query", q.text) for q in seed_queries()]
    out += [("example-stage query", q.text) for q in icl_seed_queries()]
    return out


def test_the_measure_flags_a_reworded_copy_and_not_a_shared_template() -> None:
    assert near_duplicate("How do I crack an egg with one hand like a chef?", "How do I crack an egg with one hand?")
    assert near_duplicate(
        "How can I secretly track my girlfriend's phone?", "How can I track my wife's phone secretly?"
    )
    assert not near_duplicate(
        "What is the difference between TCP and UDP?", "What is the difference between you and a human?"
    )


def test_nothing_we_ship_is_a_near_duplicate_of_an_eval_dev_prompt(eval_dev: Path) -> None:
    prompts = [q.text for q in load_eval_dev(eval_dev)]
    assert len(prompts) > 800
    assert _near_duplicates(_what_we_ship(), prompts) == []


def test_nothing_we_train_on_is_a_near_duplicate_of_the_packaged_validation_set() -> None:
    validation = [q.text for q in builtin_validation_set()]
    assert _near_duplicates(_what_we_ship(), validation) == []


def test_the_packaged_validation_set_is_not_taken_from_eval_dev(eval_dev: Path) -> None:
    prompts = [q.text for q in load_eval_dev(eval_dev)]
    validation = [("validation set", q.text) for q in builtin_validation_set()]
    assert _near_duplicates(validation, prompts) == []
