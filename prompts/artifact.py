"""The prompt artifact: what the optimizer produces and the proxy serves.

Artifacts are frozen, validated pydantic models persisted as JSON. The version id
is a content hash of everything that changes what the model sees (model id, system
prompt, examples, retrieval settings, layout), so the same content always gets the
same id and an edited export imports as a new version. Provenance is metadata and
is deliberately left out of the hash.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
VERSION_ID_LENGTH = 12

Layout = Literal["chat", "completion"]
RetrievalMethod = Literal["bm25"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Example(_Frozen):
    """One ideal (query, answer) pair from the example library."""

    query: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class RetrievalSettings(_Frozen):
    """How many examples to put in front of a query and how to pick them."""

    k: int = Field(default=3, ge=0, le=16)
    method: RetrievalMethod = "bm25"


class Provenance(_Frozen):
    """How an artifact was made. Not part of the version hash."""

    method: str = "manual"  # default | manual | import | import-drpo | optimize
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    parent_version: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class Artifact(_Frozen):
    """A servable alignment artifact for one model id."""

    schema_version: int = SCHEMA_VERSION
    model: str = Field(min_length=1)
    version: str = ""
    system_prompt: str
    examples: tuple[Example, ...] = ()
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    layout: Layout = "chat"
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than this drpo-proxy understands ({SCHEMA_VERSION})")
        return value

    @model_validator(mode="after")
    def _stamp_version(self) -> Artifact:
        # The version is always derived from content; a supplied value is ignored so
        # that hand-edited files can never claim another artifact's id.
        object.__setattr__(self, "version", content_version(self))
        return self

    def with_changes(self, **changes: Any) -> Artifact:
        """A new artifact with some fields replaced (re-validated, new version id)."""
        data = self.model_dump(mode="python")
        data.update(changes)
        data.pop("version", None)
        return Artifact.model_validate(data)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Artifact:
        return cls.model_validate(orjson.loads(raw))


def content_version(artifact: Artifact) -> str:
    """Content hash over the fields that change what the model sees."""
    payload = {
        "schema_version": artifact.schema_version,
        "model": artifact.model,
        "system_prompt": artifact.system_prompt,
        "examples": [[e.query, e.answer] for e in artifact.examples],
        "retrieval": artifact.retrieval.model_dump(mode="json"),
        "layout": artifact.layout,
    }
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:VERSION_ID_LENGTH]
