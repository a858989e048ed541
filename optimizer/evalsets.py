"""Labelled evaluation queries: files, the packaged validation set, and the eval-dev splits.

A labelled query is a prompt plus what a well-aligned model should do with it:

- ``harmful``   — should be refused (AdvBench behaviours, XSTest's unsafe contrasts);
- ``lookalike`` — sounds risky but is harmless and should be answered (XSTest safe);
- ``ordinary``  — an everyday request that should simply be answered (just-eval).

Files are JSONL with ``query`` and ``label`` (``unsafe`` is read as harmful, ``safe`` as
look-alike). ``--set`` names the built-in sets:

- ``builtin-val``: a small validation set written for this project and shipped in the
  package, so the promotion gate works without any external data;
- ``train`` / ``val`` / ``test`` (also ``eval-dev:train`` …): the split of the public
  eval-dev prompts (half of AdvBench, XSTest and just-eval-instruct) found at
  ``$DRPO_EVAL_DEV_DIR`` or ``../shared/data/eval-dev``. The files are read where they lie
  and never copied into this repository.

The split is made once and deterministically: within each (source, label) group the
prompts are ordered by a salted sha256 of their text and cut 40 % train (what the
optimizer may see), 20 % val (what selection and the gate may see), 40 % test (what
BENCHMARKS.md reports and nothing decides on). Hashing the text, not the file order,
keeps a prompt in its split even if the files are re-ordered.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

from optimizer.errors import QueryFileError

Label = Literal["harmful", "lookalike", "ordinary"]
LABELS: tuple[Label, ...] = get_args(Label)
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)
SPLIT_FRACTIONS: dict[Split, float] = {"train": 0.4, "val": 0.2, "test": 0.4}
_SPLIT_SALT = "drpo-eval-split-v1\n"
_LABEL_ALIASES: dict[str, Label] = {
    "harmful": "harmful",
    "unsafe": "harmful",
    "lookalike": "lookalike",
    "look-alike": "lookalike",
    "safe": "lookalike",
    "ordinary": "ordinary",
    "benign": "ordinary",
}
BUILTIN_VAL = "builtin-val"
EVAL_DEV_ENV = "DRPO_EVAL_DEV_DIR"


class EvalSetUnavailable(QueryFileError):
    """A named set whose data is not on this machine."""


@dataclass(frozen=True)
class LabelledQuery:
    text: str
    label: Label
    source: str = ""

    @property
    def key(self) -> str:
        """A stable id for pairing answers across versions (the text's hash)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def parse_label(value: object, where: str) -> Label:
    label = _LABEL_ALIASES.get(str(value).strip().lower()) if value is not None else None
    if label is None:
        raise QueryFileError(f"{where}: label must be one of harmful, lookalike, ordinary (got {value!r})")
    return label


def load_labelled_file(path: Path) -> list[LabelledQuery]:
    """A JSONL file of ``{"query": ..., "label": ...}`` objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise QueryFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_labelled(text, str(path))


def parse_labelled(text: str, source: str) -> list[LabelledQuery]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QueryFileError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise QueryFileError(f"{where}: expected an object with 'query' and 'label'")
        query = row.get("query") or row.get("prompt") or row.get("instruction")
        if not isinstance(query, str) or not query.strip():
            raise QueryFileError(f"{where}: no non-empty 'query' field")
        out.append(LabelledQuery(query.strip(), parse_label(row.get("label"), where), str(row.get("source", ""))))
    if not out:
        raise QueryFileError(f"{source}: no labelled queries")
    return out


def builtin_validation_set() -> list[LabelledQuery]:
    text = resources.files("optimizer").joinpath("data", "validation_set.jsonl").read_text(encoding="utf-8")
    return [LabelledQuery(q.text, q.label, BUILTIN_VAL) for q in parse_labelled(text, BUILTIN_VAL)]


# -- eval-dev ----------------------------------------------------------------------------------------


def eval_dev_dir() -> Path | None:
    """Where the eval-dev files are, or None when this machine has no copy."""
    configured = os.environ.get(EVAL_DEV_ENV)
    candidates = [Path(configured)] if configured else []
    repo_root = Path(__file__).resolve().parent.parent
    candidates += [repo_root.parent / "shared" / "data" / "eval-dev", Path.cwd().parent / "shared/data/eval-dev"]
    for candidate in candidates:
        if (candidate / "advbench_dev.csv").is_file():
            return candidate
    return None


def load_eval_dev(directory: Path) -> list[LabelledQuery]:
    """Every eval-dev prompt with its label and source (``advbench``, ``xstest:TYPE``, ``just-eval:DATASET``)."""
    out: list[LabelledQuery] = []
    with (directory / "advbench_dev.csv").open(encoding="utf-8", newline="") as handle:
        out += [LabelledQuery(row["goal"].strip(), "harmful", "advbench") for row in csv.DictReader(handle)]
    with (directory / "xstest_dev.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            label: Label = "harmful" if row["label"].strip() == "unsafe" else "lookalike"
            out.append(LabelledQuery(row["prompt"].strip(), label, f"xstest:{row['type'].strip()}"))
    for line in (directory / "just_eval_dev.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(
                LabelledQuery(str(row["instruction"]).strip(), "ordinary", f"just-eval:{row.get('dataset', '')}")
            )
    return out


def _split_rank(query: LabelledQuery) -> str:
    return hashlib.sha256((_SPLIT_SALT + query.text).encode()).hexdigest()


def split_eval_dev(queries: Iterable[LabelledQuery]) -> dict[Split, list[LabelledQuery]]:
    """The deterministic train/val/test split, stratified by source dataset and label."""
    groups: dict[tuple[str, Label], list[LabelledQuery]] = {}
    for query in queries:
        groups.setdefault((query.source.split(":")[0], query.label), []).append(query)
    out: dict[Split, list[LabelledQuery]] = {split: [] for split in SPLITS}
    for key in sorted(groups):
        ordered = sorted(groups[key], key=_split_rank)
        n_train = round(len(ordered) * SPLIT_FRACTIONS["train"])
        n_val = round(len(ordered) * SPLIT_FRACTIONS["val"])
        out["train"] += ordered[:n_train]
        out["val"] += ordered[n_train : n_train + n_val]
        out["test"] += ordered[n_train + n_val :]
    return out


def eval_dev_split(split: Split, directory: Path | None = None) -> list[LabelledQuery]:
    where = directory or eval_dev_dir()
    if where is None:
        raise EvalSetUnavailable(
            f"the eval-dev prompts were not found (set {EVAL_DEV_ENV} to the folder holding advbench_dev.csv, "
            "xstest_dev.csv and just_eval_dev.jsonl); use --queries FILE or --set builtin-val instead"
        )
    return split_eval_dev(load_eval_dev(where))[split]


SET_NAMES = (BUILTIN_VAL, *SPLITS, *(f"eval-dev:{s}" for s in SPLITS))


def resolve_set(name: str) -> list[LabelledQuery]:
    if name == BUILTIN_VAL:
        return builtin_validation_set()
    split = name.removeprefix("eval-dev:")
    if split in SPLITS:
        return eval_dev_split(split)
    raise QueryFileError(f"unknown set {name!r}; known sets: {', '.join(SET_NAMES)}")


def gather(sets: Sequence[str], files: Sequence[Path]) -> list[LabelledQuery]:
    """The queries of several sets and files, first occurrence of a text kept."""
    seen: set[str] = set()
    out = []
    for query in [q for name in sets for q in resolve_set(name)] + [q for f in files for q in load_labelled_file(f)]:
        if query.text not in seen:
            seen.add(query.text)
            out.append(query)
    return out
