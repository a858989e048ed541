"""Alignment of the embedded model under each condition, on held-out prompts, via `drpo eval`'s engine.

Conditions (each answered at temperature 0 through exactly what the proxy serves):

- ``raw``: the user's message alone (what ``x-drpo-bypass`` gives);
- ``system_only``: the default system prompt, no examples;
- ``old_default``: the first hand-written default artifact (``bench/data/default_v1.json``);
- ``default``: today's built-in default artifact;
- ``default_completion``: today's default through the completion layout (the path base
  models take; the embedded chat model stands in for a base model);
- ``optimized``: an artifact file given with ``--optimized FILE`` (e.g. a ``drpo optimize`` export).

Queries: ``--set test`` (default) is the eval-dev test split: never used to tune or choose
anything, so these are the figures to report. ``--set val`` is what choices are made on.

Usage::

    python bench/alignment_eval.py                          # test split, every condition
    python bench/alignment_eval.py --set val --conditions raw,default
    python bench/alignment_eval.py --optimized run.json --out report.json

Every call is cached under DRPO_HOME/llm-cache, so a re-run (or adding one condition)
only answers what is new. The last line is JSON: per condition, ``harmful_refusal``,
``lookalike_refusal`` and ``ordinary_refusal``, plus ``n`` per label and the set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from drpo.cli_eval import first_per_label, print_report
from drpo.endpoints import EMBEDDED
from drpo.evalrun import EvalJob, run_eval
from optimizer.evalsets import gather
from optimizer.evaluate import Condition, summary_rates
from prompts.artifact import Artifact, RetrievalSettings
from prompts.config import EMBEDDED_MODEL_ID, get_settings
from prompts.defaults import default_artifact

OLD_DEFAULT = Path(__file__).resolve().parent / "data" / "default_v1.json"
ALL = ("raw", "system_only", "old_default", "default", "default_completion", "optimized")


def conditions_for(names: list[str], optimized: Path | None) -> list[Condition]:
    default = default_artifact()
    out = []
    for name in names:
        if name == "raw":
            out.append(Condition.raw())
        elif name == "system_only":
            bare = default.with_changes(examples=(), retrieval=RetrievalSettings(k=0))
            out.append(Condition("system_only", bare))
        elif name == "old_default":
            out.append(Condition("old_default", Artifact.from_json(OLD_DEFAULT.read_bytes())))
        elif name == "default":
            out.append(Condition("default", default))
        elif name == "default_completion":
            out.append(Condition("default_completion", default, "completion"))
        elif name == "optimized":
            if optimized is None:
                continue
            out.append(Condition("optimized", Artifact.from_json(optimized.read_bytes())))
        else:
            raise SystemExit(f"unknown condition {name!r}; known: {', '.join(ALL)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], help="labelled set (default: test)")
    parser.add_argument("--queries", action="append", type=Path, default=[], help="labelled JSONL file")
    parser.add_argument("--conditions", default=",".join(ALL), help="comma-separated subset")
    parser.add_argument("--optimized", type=Path, help="an artifact JSON for the 'optimized' condition")
    parser.add_argument("--backend", help="OpenAI-compatible URL (…/v1) instead of the embedded backend")
    parser.add_argument("--model", default=EMBEDDED_MODEL_ID)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N queries of each label (quick looks)")
    parser.add_argument("--out", type=Path, help="write the full report (every answer) here")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    sets = args.set or ([] if args.queries else ["test"])
    queries = gather(sets, args.queries)
    if args.limit:
        queries = first_per_label(queries, args.limit)
    conditions = conditions_for([c.strip() for c in args.conditions.split(",") if c.strip()], args.optimized)
    job = EvalJob(
        args.model,
        conditions,
        queries,
        [*sets, *(str(q) for q in args.queries)],
        args.backend.rstrip("/") if args.backend else EMBEDDED,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
    )
    report = run_eval(console, get_settings(), job)
    print_report(console, report)
    if args.out:
        args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    summary: dict[str, Any] = dict(summary_rates(report))
    summary["n"] = report["queries"]
    summary["set"] = ",".join(sets) or "files"
    summary["max_tokens"] = args.max_tokens
    summary["limit_per_label"] = args.limit
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
