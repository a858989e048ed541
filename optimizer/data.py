"""Training queries: the packaged seed set, ``--queries`` files, and the train/validation split."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from optimizer.errors import QueryFileError
from optimizer.evalsets import Label, LabelledQuery, parse_label

_TEXT_FIELDS = ("query", "instruction", "prompt")


@dataclass(frozen=True)
class Query:
    text: str
    category: str = ""
    harmful: bool | None = None  # None: unknown, the selector decides
    # What a well-aligned model should do with it (harmful: refuse; lookalike, ordinary: answer).
    # None: unlabelled. Set explicitly, or derived from the harmful flag (see label_from_flag).
    label: Label | None = None

    def __post_init__(self) -> None:
        if self.label is None and self.harmful is not None:
            object.__setattr__(self, "label", label_from_flag(self.harmful, self.category))
        elif self.harmful is None and self.label is not None:
            object.__setattr__(self, "harmful", self.label == "harmful")

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "category": self.category, "harmful": self.harmful, "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Query:
        # Checkpoints written before labels existed carry only the harmful flag (see __post_init__).
        return cls(str(data["text"]), str(data.get("category", "")), data.get("harmful"), data.get("label"))

    @classmethod
    def from_labelled(cls, query: LabelledQuery) -> Query:
        return cls(query.text, query.source, query.label == "harmful", query.label)


def label_from_flag(harmful: object, category: str = "") -> Label | None:
    """The packaged seed sets' convention: harmful → harmful; harmless → look-alike or ordinary."""
    if harmful is True:
        return "harmful"
    if harmful is False:
        return "lookalike" if category == "lookalike" else "ordinary"
    return None


def _from_object(obj: Any, where: str) -> Query:
    if isinstance(obj, str):
        return Query(obj.strip())
    if not isinstance(obj, dict):
        raise QueryFileError(f"{where}: expected an object or a string, got {type(obj).__name__}")
    for name in _TEXT_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            # Alpaca-style records may carry their input separately.
            extra = obj.get("input")
            text = value.strip() + (f"\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else "")
            harmful = obj.get("harmful")
            category = str(obj.get("category", ""))
            if obj.get("label") is not None:
                label = parse_label(obj["label"], where)
                return Query(text, category, label == "harmful", label)
            return Query(text, category, harmful if isinstance(harmful, bool) else None)
    raise QueryFileError(f"{where}: no non-empty 'query', 'instruction' or 'prompt' field")


def parse_queries(text: str, source: str = "input") -> list[Query]:
    """Queries from JSONL, a JSON list, or plain text with one query per line."""
    stripped = text.lstrip()
    queries: list[Query] = []
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise QueryFileError(f"{source} looks like a JSON list but is not valid JSON: {exc}") from exc
        queries = [_from_object(item, f"{source}[{i}]") for i, item in enumerate(data)]
    else:
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        is_jsonl = bool(lines) and all(line.startswith("{") for _, line in lines)
        for n, line in lines:
            if is_jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise QueryFileError(f"{source}:{n}: invalid JSON: {exc}") from exc
                queries.append(_from_object(obj, f"{source}:{n}"))
            else:
                queries.append(Query(line))
    queries = _dedupe([q for q in queries if q.text])
    if not queries:
        raise QueryFileError(f"{source} holds no queries")
    return queries


def _dedupe(queries: list[Query]) -> list[Query]:
    seen: set[str] = set()
    out = []
    for q in queries:
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out


def load_query_file(path: Path) -> list[Query]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryFileError(f"cannot read query file {path}: {exc}") from exc
    return parse_queries(text, str(path))


def _packaged(name: str) -> list[Query]:
    text = resources.files("optimizer").joinpath("data", name).read_text(encoding="utf-8")
    return parse_queries(text, name)


def seed_queries() -> list[Query]:
    """The product's own training pool (written for this project)."""
    return _packaged("seed_queries.jsonl")


def icl_seed_queries() -> list[Query]:
    """Queries whose answers Stage 1 turns into the example library."""
    return _packaged("icl_queries.jsonl")


def split_queries(queries: list[Query], val_size: int, seed: int) -> tuple[list[Query], list[Query]]:
    """(train, validation), deterministic for a seed.

    When harmfulness is labelled, validation gets its fair share of harmful queries so a
    10-query held-out set still checks refusals. Train order is the visiting order.
    """
    rng = random.Random(seed)
    shuffled = list(queries)
    rng.shuffle(shuffled)
    val_size = max(0, min(val_size, len(shuffled) - 1))
    harmful = [q for q in shuffled if q.harmful]
    if harmful and val_size:
        n_harm = min(len(harmful), max(1, round(val_size * len(harmful) / len(shuffled))))
        benign = [q for q in shuffled if not q.harmful]
        val = harmful[:n_harm] + benign[: val_size - n_harm]
        val = sorted(val, key=shuffled.index)
    else:
        val = shuffled[:val_size]
    chosen = {id(q) for q in val}
    train = [q for q in shuffled if id(q) not in chosen]
    return train, val
