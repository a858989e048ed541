"""The run directory: ``DRPO_HOME/runs/RUN_ID/``.

``state.json`` is the resume contract (rewritten atomically after every example, every
library-stage proposal, every beam level and every validation candidate); ``trace.json`` lists every node of the
search for later analysis. Both are plain JSON.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError

from optimizer.beam import BeamProgress
from optimizer.errors import RunStateError
from optimizer.icl import IclResult
from optimizer.library import LibraryProgress
from optimizer.rewarding import Evaluation, Selection
from prompts.store import write_atomic


class ValidationResult(BaseModel):
    node_id: str
    prompt: str
    train_reward: float | None
    evaluations: list[Evaluation] = Field(default_factory=list)
    score: float | None = None
    excluded: int = 0


class RunState(BaseModel):
    run_id: str
    config: dict[str, Any]
    status: str = "running"  # running | stopped | done
    stop_reason: str = ""
    queries: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    selections: dict[str, Selection] = Field(default_factory=dict)
    icl: dict[int, IclResult] = Field(default_factory=dict)
    library: LibraryProgress | None = None  # absent in checkpoints from before the library stage
    beam: BeamProgress | None = None
    validation: dict[str, ValidationResult] = Field(default_factory=dict)
    chosen: str | None = None
    choice_reasons: dict[str, str] = Field(default_factory=dict)  # per candidate: why it did (not) beat the initial
    artifact_version: str | None = None
    sessions: list[dict[str, Any]] = Field(default_factory=list)
    # Role endpoints (url, model; never keys) so --resume needs no flags.
    roles: dict[str, dict[str, str]] = Field(default_factory=dict)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class RunDir:
    def __init__(self, runs_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(runs_dir) / run_id

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> RunState:
        try:
            return RunState.model_validate(orjson.loads(self.state_path.read_bytes()))
        except FileNotFoundError as exc:
            raise RunStateError(f"no run {self.run_id!r} at {self.path}") from exc
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise RunStateError(f"run {self.run_id!r} has an unreadable state.json: {exc}") from exc

    def save(self, state: RunState) -> None:
        write_atomic(self.state_path, orjson.dumps(state.model_dump(mode="json")))

    def write_trace(self, state: RunState) -> Path:
        nodes = [] if state.beam is None else [n.model_dump(mode="json") for n in state.beam.nodes.values()]
        trace = {
            "run_id": state.run_id,
            "config": state.config,
            "status": state.status,
            "selections": {q: s.model_dump(mode="json") for q, s in state.selections.items()},
            "examples": [state.icl[i].model_dump(mode="json") for i in sorted(state.icl)],
            "library": None if state.library is None else state.library.model_dump(mode="json"),
            "nodes": nodes,
            "beam": [] if state.beam is None else state.beam.beam,
            "rewrite_failures": [] if state.beam is None else state.beam.rewrite_failures,
            "validation": [v.model_dump(mode="json") for v in state.validation.values()],
            "chosen": state.chosen,
            "artifact_version": state.artifact_version,
            "sessions": state.sessions,
        }
        path = self.path / "trace.json"
        write_atomic(path, orjson.dumps(trace, option=orjson.OPT_INDENT_2))
        return path
