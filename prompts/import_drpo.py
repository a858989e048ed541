"""Import the reference DRPO implementation's released format.

The reference publishes, per model, an ``output.json`` holding its beam search as a
dict of levels::

    {"level 1": {"Prompt": "...", "Evaluation of the prompt": {"Helpfulness": {"score": "5", ...}}},
     ...
     "level 30": {...}}

and one example library ``ICL_examples.json``: a query → answer map whose answers are
wrapped in the start/end markers of the completion layout. The last level's prompt is
the optimized system prompt. Parsing is pure (bytes in, values out); only
:func:`import_drpo_dir` touches the file system.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from prompts.artifact import Artifact, Example, Layout, Provenance
from prompts.errors import InvalidArtifact
from prompts.layout import END_MARKER, START_MARKER
from prompts.store import validation_summary

OUTPUT_FILE = "output.json"
ICL_FILE = "ICL_examples.json"
IMPORT_METHOD = "import-drpo"

_LEVEL_KEY = re.compile(r"^\s*level\s+(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ReleasedPrompt:
    """The last level of a released beam search."""

    level: int
    levels: int
    prompt: str
    # Aspect -> score of the last level's evaluation (one query, judged by the reference).
    aspect_scores: dict[str, float] = field(default_factory=dict)

    @property
    def mean_score(self) -> float | None:
        if not self.aspect_scores:
            return None
        return sum(self.aspect_scores.values()) / len(self.aspect_scores)


def _load_json(raw: bytes | str, source: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArtifact(f"{source} is not valid JSON: {exc}") from exc


def _aspect_scores(evaluation: Any) -> dict[str, float]:
    """Numeric scores of an evaluation; unparseable entries are skipped, not zeroed."""
    if not isinstance(evaluation, Mapping):
        return {}
    scores: dict[str, float] = {}
    for aspect, entry in evaluation.items():
        value = entry.get("score") if isinstance(entry, Mapping) else entry
        if not isinstance(value, str | int | float):
            continue
        try:
            scores[str(aspect)] = float(value)
        except (TypeError, ValueError):
            continue
    return scores


def parse_output(raw: bytes | str, source: str = OUTPUT_FILE) -> ReleasedPrompt:
    """The last level (by number, so level 10 comes after level 9) of an ``output.json``."""
    data = _load_json(raw, source)
    if not isinstance(data, Mapping):
        raise InvalidArtifact(f"{source} must be a JSON object of 'level N' entries")
    levels: dict[int, Any] = {}
    for key, value in data.items():
        match = _LEVEL_KEY.match(str(key))
        if match:
            levels[int(match.group(1))] = value
    if not levels:
        raise InvalidArtifact(f"{source} has no 'level N' entries")
    last = max(levels)
    entry = levels[last]
    if not isinstance(entry, Mapping):
        raise InvalidArtifact(f"{source}: level {last} is not an object")
    prompt = entry.get("Prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidArtifact(f"{source}: level {last} has no non-empty 'Prompt' string")
    return ReleasedPrompt(
        level=last,
        levels=len(levels),
        prompt=prompt.strip(),
        aspect_scores=_aspect_scores(entry.get("Evaluation of the prompt")),
    )


def strip_markers(answer: str) -> str:
    """An answer without the completion-layout markers (anywhere: a stray end marker
    inside an example would cut a completion short)."""
    return answer.replace(START_MARKER, "").replace(END_MARKER, "").strip()


def parse_icl_examples(raw: bytes | str, source: str = ICL_FILE) -> tuple[Example, ...]:
    """The example library of an ``ICL_examples.json`` query → answer map, in file order."""
    data = _load_json(raw, source)
    if not isinstance(data, Mapping):
        raise InvalidArtifact(f"{source} must be a JSON object mapping queries to answers")
    examples = []
    for query, answer in data.items():
        if not isinstance(answer, str):
            raise InvalidArtifact(f"{source}: the answer to {str(query)[:60]!r} is not a string")
        query_text = str(query).strip()
        answer_text = strip_markers(answer)
        if not query_text or not answer_text:
            raise InvalidArtifact(f"{source}: empty query or answer near {str(query)[:60]!r}")
        examples.append(Example(query=query_text, answer=answer_text))
    return tuple(examples)


def build_artifact(
    model: str,
    released: ReleasedPrompt,
    examples: tuple[Example, ...],
    details: Mapping[str, Any] | None = None,
    layout: Layout = "chat",
) -> Artifact:
    scores = {"reference_last_level_mean": mean} if (mean := released.mean_score) is not None else {}
    provenance = Provenance(
        method=IMPORT_METHOD,
        scores=scores,
        details={
            "level": released.level,
            "levels": released.levels,
            "aspect_scores": released.aspect_scores,
            **(details or {}),
        },
    )
    try:
        return Artifact(
            model=model,
            system_prompt=released.prompt,
            examples=examples,
            layout=layout,
            provenance=provenance,
        )
    except ValidationError as exc:
        raise InvalidArtifact(f"cannot build an artifact for {model!r}: {validation_summary(exc)}") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArtifact(f"cannot read {path}: {exc.strerror or exc}") from exc


def import_drpo_dir(directory: Path, model: str, icl: Path | None = None, layout: Layout = "chat") -> Artifact:
    """An artifact from a released directory: ``DIR/output.json`` plus an example library.

    The examples come from ``icl`` when given, else ``DIR/ICL_examples.json`` when it
    exists, else the artifact has none.
    """
    directory = Path(directory)
    output = directory / OUTPUT_FILE if directory.is_dir() else directory
    released = parse_output(_read(output), str(output))
    icl_path = icl if icl is not None else directory / ICL_FILE
    examples: tuple[Example, ...] = ()
    if icl is not None or icl_path.is_file():
        examples = parse_icl_examples(_read(icl_path), str(icl_path))
    details: dict[str, Any] = {"source": str(output.resolve())}
    if examples:
        details["examples_source"] = str(icl_path.resolve())
    return build_artifact(model, released, examples, details, layout)
