"""Bring a store to the current layout when it is opened (see ``prompts/store_layout.py``).

Schema 1 (drpo-proxy before the append-only layout) used pickled tuple keys and JSON lists
that grew with every import and activation:

- ``("artifact", model, version)`` → artifact JSON
- ``("versions", model)`` → ``[{"version", "added_at"}, ...]``
- ``("history", model)`` → ``[{"version", "at", "action"}, ...]``
- ``("active", model)`` → version id; ``"generation"`` → int

The new rows are written and the schema key set in one transaction, so a crash leaves
either the old store or the migrated one. The old keys are deleted only after that commit
(each delete is its own transaction, and diskcache removes a large old value's file only
after its own commit): a crash during the clean-up leaves harmless leftovers (old keys, an
orphan value file) that the next open deletes. Old values may be files on disk; the new copies are always inline.

An old store already damaged by the bug this layout fixes (a version list whose file is
gone) keeps every artifact still present: versions missing from the list are appended in
order of creation time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
import orjson

from prompts.artifact import Artifact
from prompts.errors import PromptsError
from prompts.store_layout import (
    GENERATION_KEY,
    LEGACY_CLEANUP_KEY,
    MODELS_KEY,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    AppendLog,
    active_key,
    artifact_key,
    version_index_key,
)

_LEGACY_KINDS = frozenset({"artifact", "versions", "history", "active"})
_LEGACY_GENERATION = "generation"


def version_summary(artifact: Artifact, added_at: str) -> dict[str, Any]:
    """The row of a version log: enough for ``versions()`` without loading the artifact."""
    return {
        "version": artifact.version,
        "added_at": added_at,
        "method": artifact.provenance.method,
        "scores": dict(artifact.provenance.scores),
        "created_at": artifact.provenance.created_at.isoformat(),
    }


def stack_links(history: list[dict[str, Any]]) -> list[int]:
    """For each history entry, the entry number (1-based) of the activation below it (0: none).

    Replays the old rule: an activation pushes its version unless it is already on top; a
    rollback pops the top and lands on its version. Entry ``i`` then stands for the top
    of the stack, and its link names the entry that stands for the element below.
    """
    stack: list[tuple[str, int]] = []  # (version, entry number standing for it)
    links = []
    for number, entry in enumerate(history, 1):
        version = str(entry["version"])
        if entry.get("action") == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1][0] != version:
            stack.append((version, number))
        else:
            stack[-1] = (version, number)
        links.append(stack[-2][1] if len(stack) > 1 else 0)
    return links


@dataclass
class _Legacy:
    artifacts: dict[str, dict[str, bytes]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    keys: list[Any] = field(default_factory=list)


def _is_legacy(name: Any) -> bool:
    if name == _LEGACY_GENERATION:
        return True
    return isinstance(name, tuple) and len(name) >= 2 and name[0] in _LEGACY_KINDS


def _read_legacy(cache: diskcache.Cache) -> _Legacy:
    legacy = _Legacy()
    for name in list(cache):
        if not _is_legacy(name):
            continue
        legacy.keys.append(name)
        value = cache.get(name)  # None when the value's file is gone (the old bug)
        if value is None:
            continue
        if name == _LEGACY_GENERATION:
            legacy.generation = int(value)
        elif name[0] == "artifact" and len(name) == 3:
            legacy.artifacts.setdefault(str(name[1]), {})[str(name[2])] = bytes(value)
        elif name[0] == "versions":
            legacy.versions[str(name[1])] = list(orjson.loads(value))
        elif name[0] == "history":
            legacy.history[str(name[1])] = list(orjson.loads(value))
        elif name[0] == "active":
            legacy.active[str(name[1])] = str(value)
    return legacy


def _parse(raw: bytes, model: str, version: str) -> Artifact:
    try:
        return Artifact.from_json(raw)
    except ValueError as exc:  # orjson and pydantic errors are both ValueErrors
        raise PromptsError(f"cannot migrate the store: stored artifact {model}@{version} is unreadable") from exc


def _write_model(cache: diskcache.Cache, legacy: _Legacy, model: str) -> bool:
    """Write one model's versions, history and active pointer; False when it has no version."""
    stored = legacy.artifacts.get(model, {})
    listed = [(str(e["version"]), str(e.get("added_at", ""))) for e in legacy.versions.get(model, [])]
    parsed = {version: _parse(raw, model, version) for version, raw in stored.items()}
    seen = {version for version, _ in listed}
    unlisted = sorted((a.provenance.created_at, v) for v, a in parsed.items() if v not in seen)
    first_listed: dict[str, str] = {}
    for version, added_at in listed:
        if version in parsed:
            first_listed.setdefault(version, added_at)
    order = [*first_listed.items(), *((v, created.isoformat()) for created, v in unlisted)]
    versions, history = AppendLog(cache, "version"), AppendLog(cache, "history")
    for version, added_at in order:
        cache.set(artifact_key(model, version), stored[version])
        seq = versions.append(model, version_summary(parsed[version], added_at))
        cache.set(version_index_key(model, version), seq)
    entries = legacy.history.get(model, [])
    for entry, below in zip(entries, stack_links(entries), strict=True):
        record = {"version": entry["version"], "at": entry.get("at", ""), "action": entry.get("action", "activate")}
        history.append(model, {**record, "below": below})
    active = legacy.active.get(model)
    if active is not None and active in parsed:
        cache.set(active_key(model), active)
    return bool(order)


def ensure_schema(cache: diskcache.Cache) -> None:
    """Create or migrate the layout; cheap (one read) when the store is already current."""
    schema = cache.get(SCHEMA_KEY)
    if schema is None:
        with cache.transact():
            if cache.get(SCHEMA_KEY) is None:  # another process may have migrated meanwhile
                legacy = _read_legacy(cache)
                models = sorted(set(legacy.artifacts) | set(legacy.versions) | set(legacy.history))
                kept = [model for model in models if _write_model(cache, legacy, model)]
                cache.set(MODELS_KEY, orjson.dumps(kept))
                cache.set(GENERATION_KEY, legacy.generation)
                if legacy.keys:
                    cache.set(LEGACY_CLEANUP_KEY, 1)
                cache.set(SCHEMA_KEY, SCHEMA_VERSION)
    elif int(schema) > SCHEMA_VERSION:
        raise PromptsError(
            f"the store was written by a newer drpo-proxy (schema {schema}, this one understands {SCHEMA_VERSION})"
        )
    if cache.get(LEGACY_CLEANUP_KEY) is not None:
        _drop_legacy_keys(cache)


def _drop_legacy_keys(cache: diskcache.Cache) -> None:
    for name in list(cache):
        if _is_legacy(name):
            cache.delete(name)
    # diskcache removes a value's file just after the delete commits; a crash in between
    # leaves an orphan. Once no old key remains no row names a file (the current layout
    # keeps every value inline), so any value file left is one of those orphans.
    directory = Path(cache.directory)
    for orphan in directory.glob("*/*/*.val"):
        cache.disk.remove(str(orphan.relative_to(directory)))
    cache.delete(LEGACY_CLEANUP_KEY)
