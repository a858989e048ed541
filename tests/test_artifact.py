"""The artifact schema: content-hash versions, frozen, strict."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from prompts.artifact import SCHEMA_VERSION, VERSION_ID_LENGTH, Artifact, Example, Provenance, RetrievalSettings


def _artifact(**changes: object) -> Artifact:
    data: dict[str, object] = {
        "model": "m",
        "system_prompt": "Be helpful.",
        "examples": [{"query": "How do I list files?", "answer": "Use ls."}],
    }
    data.update(changes)
    return Artifact.model_validate(data)


def test_version_is_a_stable_content_hash() -> None:
    a, b = _artifact(), _artifact()
    assert a.version == b.version
    assert len(a.version) == VERSION_ID_LENGTH
    assert all(c in "0123456789abcdef" for c in a.version)
    # Round trip through JSON keeps the id.
    assert Artifact.from_json(a.to_json()).version == a.version


def test_version_ignores_provenance() -> None:
    base = _artifact()
    other = _artifact(
        provenance=Provenance(
            method="optimize", created_at=datetime(2020, 1, 1, tzinfo=UTC), scores={"val": 4.5}, parent_version="x"
        )
    )
    assert other.version == base.version


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "other"},
        {"system_prompt": "Be very helpful."},
        {"examples": [{"query": "How do I list files?", "answer": "Use ls -la."}]},
        {"examples": []},
        {"retrieval": {"k": 1}},
        {"layout": "completion"},
    ],
)
def test_version_changes_with_content(changes: dict[str, object]) -> None:
    assert _artifact(**changes).version != _artifact().version


def test_supplied_version_is_overridden() -> None:
    real = _artifact()
    forged = _artifact(version="deadbeef0000")
    assert forged.version == real.version
    data = orjson.loads(real.to_json())
    data["system_prompt"] = "Edited."
    edited = Artifact.model_validate(data)  # still carries the old version string in the input
    assert edited.version != real.version


def test_with_changes_gives_a_new_version() -> None:
    a = _artifact()
    b = a.with_changes(system_prompt="Different.")
    assert b.system_prompt == "Different." and b.version != a.version
    assert a.system_prompt == "Be helpful."


def test_frozen() -> None:
    a = _artifact()
    with pytest.raises(ValidationError):
        a.system_prompt = "changed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        a.examples[0].answer = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [
        {"model": "m", "system_prompt": "x", "surprise": 1},
        {"model": "m", "system_prompt": "x", "examples": [{"query": "q", "answer": "a", "extra": 1}]},
        {"model": "m", "system_prompt": "x", "provenance": {"method": "manual", "unknown": 1}},
        {"model": "m", "system_prompt": "x", "retrieval": {"k": 3, "method": "bm25", "other": 1}},
    ],
)
def test_extra_fields_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Artifact.model_validate(data)


@pytest.mark.parametrize(
    "data",
    [
        {"model": "", "system_prompt": "x"},
        {"system_prompt": "x"},
        {"model": "m", "system_prompt": "x", "layout": "weird"},
        {"model": "m", "system_prompt": "x", "retrieval": {"k": -1}},
        {"model": "m", "system_prompt": "x", "examples": [{"query": "", "answer": "a"}]},
    ],
)
def test_invalid_content_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Artifact.model_validate(data)


def test_newer_schema_version_rejected() -> None:
    with pytest.raises(ValidationError, match="newer"):
        _artifact(schema_version=SCHEMA_VERSION + 1)
    assert _artifact(schema_version=SCHEMA_VERSION).schema_version == SCHEMA_VERSION


def test_defaults() -> None:
    a = Artifact(model="m", system_prompt="x", examples=(Example(query="q", answer="a"),))
    assert a.layout == "chat"
    assert a.retrieval == RetrievalSettings(k=3, method="bm25")
    assert a.provenance.method == "manual"
    assert a.schema_version == SCHEMA_VERSION
