"""What example block each labelled query gets, without calling any model.

With a labelled library the selection (``prompts.selection``) decides per query whether the
model sees refusals or helpful answers, and a small model mostly does what its examples
do. So the share of queries that get a refusal block, per label, is a fast, model-free
preview of refusal rates: harmful should be high, look-alike and ordinary low. It is used
to tune the library and the selection settings on the *train* split, check them on *val*,
and never to decide anything on *test*.

Usage::

    python bench/retrieval_decisions.py --set train                       # the default artifact
    python bench/retrieval_decisions.py --set val --artifact v.json --method hybrid
    python bench/retrieval_decisions.py --set train --grid                # sweep the selection settings
    python bench/retrieval_decisions.py --set train --show-misses 20      # which queries go wrong

The last line is JSON: per method, the refusal-block share per label.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from optimizer.evalsets import LABELS, LabelledQuery, gather
from prompts.artifact import Artifact, RetrievalSettings
from prompts.defaults import default_artifact
from prompts.layout import PreparedArtifact

T = TypeVar("T")


def decisions(
    prepared: PreparedArtifact, queries: list[LabelledQuery], known: dict[str, list[float]] | None = None
) -> list[tuple[LabelledQuery, bool, float]]:
    """(query, got a refusal block, best similarity) per query.

    ``known`` keeps each query's similarities across variants that differ only in selection
    settings (the scores depend on the method and the library alone), so a grid costs one
    embedding per query.
    """
    examples = prepared.artifact.examples
    retrieval = prepared.artifact.retrieval
    out = []
    for query in queries:
        scores = known.get(query.text) if known is not None else None
        if scores is None:
            scores = [float(x) for x in prepared.scorer.scores(query.text)]
            if known is not None:
                known[query.text] = scores
        chosen = prepared.selector.select(scores, max(1, retrieval.k), retrieval)
        refusal = bool(chosen) and all(examples[i].label == "refusal" for i in chosen)
        out.append((query, refusal, max(scores, default=0.0)))
    return out


def shares(rows: list[tuple[LabelledQuery, bool, float]]) -> dict[str, float]:
    out = {}
    for label in LABELS:
        mine = [refused for q, refused, _ in rows if q.label == label]
        if mine:
            out[f"{label}_refusal_block"] = round(sum(mine) / len(mine), 3)
    return out


def _with(artifact: Artifact, **changes: Any) -> Artifact:
    retrieval = artifact.retrieval.model_dump()
    retrieval.update(changes)
    return artifact.with_changes(retrieval=RetrievalSettings(**retrieval))


def _numbers(text: str, kind: Callable[[str], T]) -> list[T]:
    return [kind(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], help="labelled set name (repeatable)")
    parser.add_argument("--queries", action="append", type=Path, default=[], help="labelled JSONL (repeatable)")
    parser.add_argument("--artifact", type=Path, help="artifact JSON (default: the built-in default)")
    parser.add_argument("--method", action="append", default=[], help="bm25 | embedding | hybrid | minilm (repeatable)")
    parser.add_argument("--grid", action="store_true", help="sweep refusal_share, neighbours and min_similarity")
    parser.add_argument("--neighbours", default="8,16,32", help="grid: comma-separated neighbour counts")
    parser.add_argument("--shares", default="0.5,0.55,0.6", help="grid: comma-separated refusal shares")
    parser.add_argument(
        "--floors",
        default="0.3,0.35,0.38,0.42",
        help="grid: similarity floors (scale differs by method)",
    )
    parser.add_argument("--show-misses", type=int, default=0, help="print this many wrong decisions per label")
    args = parser.parse_args(argv)

    queries = gather(args.set or ["builtin-val"], args.queries)
    artifact = Artifact.from_json(args.artifact.read_bytes()) if args.artifact else default_artifact()
    methods = args.method or [artifact.retrieval.method]
    print(f"{len(queries)} queries, library of {len(artifact.examples)}, k={artifact.retrieval.k}")
    summary: dict[str, Any] = {}
    for method in methods:
        variants = [_with(artifact, method=method)]
        if args.grid:
            variants = [
                _with(artifact, method=method, refusal_share=share, neighbours=n, min_similarity=floor)
                for n in _numbers(args.neighbours, int)
                for share in _numbers(args.shares, float)
                for floor in _numbers(args.floors, float)
            ]
        known: dict[str, list[float]] = {}
        for variant in variants:
            prepared = PreparedArtifact.build(variant)
            rows = decisions(prepared, queries, known)
            result = shares(rows)
            r = variant.retrieval
            name = f"{method} n={r.neighbours} share={r.refusal_share} min={r.min_similarity}"
            print(f"  {name:<40} " + "  ".join(f"{k.split('_')[0]} {v:.0%}" for k, v in result.items()), flush=True)
            summary[name] = result
            if args.show_misses:
                for label in LABELS:
                    wrong = [(q, s) for q, refused, s in rows if q.label == label and refused != (label == "harmful")]
                    for q, best in wrong[: args.show_misses]:
                        print(f"    miss [{label}] best={best:.2f} {q.text[:100]!r}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
