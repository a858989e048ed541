"""Injected prompt tokens per request for k = 0..5, and how much of them is a stable prefix.

    .venv/bin/python bench/injected_tokens.py [--set builtin-val] [--layout chat|completion] [--k 0,1,2,3,4,5]

For every query of the set (shuffled with a fixed seed: mixed traffic, as a server sees it),
the request the proxy would send for a one-turn chat is built with the default artifact and
its retrieval settings, with k examples, by the shared layout (``prompts.layout``). Tokens
are counted with the embedded model's own tokenizer (llama.cpp on the packaged SmolLM2 GGUF)
on the text the model sees: the chat layout rendered with the GGUF's chat template, the
completion layout as the raw prompt. Reported per k:

- ``injected``: tokens of what the proxy adds (our system message and the example turns as
  rendered; for the completion layout everything before the question's ``# Query:`` block);
- ``stable``: the token prefix that *every* request shares, so a prefix cache (vLLM's
  automatic prefix caching, llama.cpp's slot cache) can always reuse it;
- ``reused``: the longest token prefix (within the injected part) a request shares with any
  earlier request of the run: what an automatic prefix cache that evicts nothing reuses
  (block granularity ignored); the stable part plus, when an earlier query got the same
  first examples, those too. Requests 2..n are averaged (the first has nothing cached).

The last line of output is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from drpo.embedded import find_gguf
from optimizer.evalsets import resolve_set
from prompts.defaults import default_artifact
from prompts.layout import PreparedArtifact, build_chat_messages, build_completion_prompt

Tokenize = Callable[[str], list[int]]
Render = Callable[[list[dict[str, Any]]], str]


def load_tokenizer() -> tuple[Tokenize, Render]:
    """SmolLM2's tokenizer and chat template, from the packaged GGUF (vocabulary only, no weights)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(find_gguf()), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    formatter = Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=False)

    def tokenize(text: str) -> list[int]:
        return list(llm.tokenize(text.encode(), add_bos=False, special=True))

    def render(messages: list[dict[str, Any]]) -> str:
        return str(formatter(messages=cast(Any, messages)).prompt)  # plain dicts: the layout's messages

    return tokenize, render


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def percentile(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def measure(
    prepared: PreparedArtifact, queries: Sequence[str], k: int, layout: str, tokenize: Tokenize, render: Render
) -> dict[str, Any]:
    injected: list[int] = []
    prompts: list[list[int]] = []
    for query in queries:
        conversation = [{"role": "user", "content": query}]
        if layout == "chat":
            messages = build_chat_messages(prepared, conversation, k=k)
            injected.append(len(tokenize(render(messages[:-1]))) if len(messages) > 1 else 0)
            prompts.append(tokenize(render(messages)))
        else:
            prompt = build_completion_prompt(prepared, conversation, k=k)
            injected.append(len(tokenize(prompt[: prompt.rindex(f"# Query:\n{query}")])))
            prompts.append(tokenize(prompt))
    stable = min((common_prefix(prompts[0], p) for p in prompts[1:]), default=len(prompts[0]))
    stable = min(stable, min(injected))  # the question itself is never part of it
    reused = [
        min(max(common_prefix(earlier, prompts[i]) for earlier in prompts[:i]), injected[i])
        for i in range(1, len(prompts))
    ]
    return {
        "k": k,
        "requests": len(queries),
        "injected_mean": round(statistics.fmean(injected), 1),
        "injected_p50": percentile(injected, 0.5),
        "injected_p95": percentile(injected, 0.95),
        "stable_prefix": stable,
        "stable_share": round(stable / statistics.fmean(injected), 3) if any(injected) else None,
        "reused_mean": round(statistics.fmean(reused), 1) if reused else 0.0,
        "reused_share": round(statistics.fmean(reused) / statistics.fmean(injected), 3) if any(injected) else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--set", default="builtin-val", help="query set: builtin-val, train, val, test")
    parser.add_argument("--layout", choices=["chat", "completion"], default="chat")
    parser.add_argument("--k", default="0,1,2,3,4,5", help="comma-separated example counts")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed for the request order")
    args = parser.parse_args(argv)

    queries = [q.text for q in resolve_set(args.set)]
    random.Random(args.seed).shuffle(queries)
    tokenize, render = load_tokenizer()
    artifact = default_artifact()
    prepared = PreparedArtifact.build(artifact)
    print(
        f"default artifact {artifact.version} (retrieval {artifact.retrieval.method}), set {args.set} "
        f"({len(queries)} queries), layout {args.layout}, SmolLM2 tokenizer"
    )
    print(f"{'k':>2} {'mean':>7} {'p50':>6} {'p95':>6} {'stable':>7} {'stable %':>9} {'reused':>7} {'reused %':>9}")
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        row = measure(prepared, queries, k, args.layout, tokenize, render)
        rows.append(row)
        share = f"{100 * row['stable_share']:.0f}%" if row["stable_share"] is not None else "-"
        reused = f"{100 * row['reused_share']:.0f}%" if row["reused_share"] is not None else "-"
        print(
            f"{k:>2} {row['injected_mean']:>7} {row['injected_p50']:>6.0f} {row['injected_p95']:>6.0f} "
            f"{row['stable_prefix']:>7} {share:>9} {row['reused_mean']:>7} {reused:>9}"
        )
    summary = {"artifact": artifact.version, "set": args.set, "layout": args.layout, "rows": rows}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
