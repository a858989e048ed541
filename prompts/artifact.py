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
# bm25: lexical; embedding: WordLlama static embeddings (bundled weights, CPU, offline);
# hybrid: both, fused (see prompts.retrieval). One mechanism picks examples for all of them.
# backend: a backend's /v1/embeddings (retrieval.embedding_model), BM25 when it is unavailable.
# minilm: all-MiniLM-L6-v2 contextual sentence embeddings, run in numpy (prompts.minilm).
RetrievalMethod = Literal["bm25", "embedding", "hybrid", "backend", "minilm"]
# refusal: the answer declines; helpful: a harmless request (often one that sounds risky)
# answered fully; general: an everyday request, the fallback when nothing matches well.
ExampleLabel = Literal["refusal", "helpful", "general"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Example(_Frozen):
    """One ideal (query, answer) pair from the example library."""

    query: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    label: ExampleLabel | None = None  # None: unlabelled (plain similarity ranking)


class RetrievalSettings(_Frozen):
    """How many examples to put in front of a query and how to pick them.

    With labelled examples, the ``neighbours`` most similar examples vote (weighted by
    similarity): when refusals hold at least ``refusal_share`` of the weight, the k best
    refusals are shown, otherwise the k best non-refusals; when even the best example is
    no more similar than ``min_similarity``, the k best ``general`` examples are shown.
    See :mod:`prompts.selection`.
    """

    k: int = Field(default=3, ge=0, le=16)
    method: RetrievalMethod = "bm25"
    neighbours: int = Field(default=5, ge=1, le=64)
    refusal_share: float = Field(default=0.5, gt=0, le=1)
    min_similarity: float = Field(default=0.0, ge=0, le=1)
    embedding_model: str | None = Field(default=None, min_length=1)  # for method "backend"

    @model_validator(mode="after")
    def _backend_needs_a_model(self) -> RetrievalSettings:
        if self.method == "backend" and not self.embedding_model:
            raise ValueError("retrieval method 'backend' needs retrieval.embedding_model")
        return self

    def hashed(self) -> dict[str, Any]:
        """What the version hash covers: k and method always, later fields only when set.

        Keeping fields added after schema 1 out of the hash at their defaults keeps every
        existing artifact's version id unchanged.
        """
        data = self.model_dump(mode="json")
        return {
            name: value
            for name, value in data.items()
            if name in ("k", "method") or value != RetrievalSettings.model_fields[name].default
        }


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
        "examples": [[e.query, e.answer] + ([e.label] if e.label else []) for e in artifact.examples],
        "retrieval": artifact.retrieval.hashed(),
        "layout": artifact.layout,
    }
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:VERSION_ID_LENGTH]
