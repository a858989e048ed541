"""The versioned artifact store, on diskcache.

Layout of keys in one diskcache ``Cache`` (SQLite underneath):

- ``("artifact", model, version)`` → artifact JSON (bytes). Immutable once written.
- ``("versions", model)``          → JSON list of ``{"version", "added_at"}`` in insertion order.
- ``("history", model)``           → JSON list of ``{"version", "at", "action"}`` activations.
- ``("active", model)``            → the active version id.
- ``"generation"``                 → counter bumped on every change of an active pointer.

Every multi-key change runs inside ``cache.transact()``, one SQLite transaction, so a
reader in another process sees either the old state or the new one, never half of it.
Values are JSON, never pickle. ``generation`` lets the proxy notice a change with one
cheap read instead of reloading every artifact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import diskcache
import orjson
from pydantic import ValidationError

from prompts.artifact import Artifact
from prompts.errors import ArtifactNotFound, InvalidArtifact, NothingToRollBack

_GENERATION = "generation"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class VersionInfo:
    version: str
    added_at: str
    active: bool
    method: str
    scores: dict[str, float]
    created_at: str = ""  # the artifact's provenance.created_at (ISO 8601)


def parse_artifact(raw: bytes | str, source: str = "input") -> Artifact:
    """Validate artifact JSON, turning every failure into :class:`InvalidArtifact`."""
    try:
        return Artifact.from_json(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArtifact(f"{source} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise InvalidArtifact(f"{source} is not a valid artifact: {validation_summary(exc)}") from exc


def validation_summary(exc: ValidationError, limit: int = 3) -> str:
    """A one-line account of a validation error (pydantic's own text spans many lines)."""
    problems = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "artifact"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - limit
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


class PromptStore:
    """Immutable artifact versions with one active version per model id."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # JSONDisk would also work; we store bytes we serialised ourselves so the on-disk
        # format is plain JSON regardless of diskcache's disk class.
        self._cache = diskcache.Cache(str(self.directory), timeout=30)

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> PromptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------

    def _json(self, key: Any, default: Any) -> Any:
        raw = self._cache.get(key)
        return default if raw is None else orjson.loads(raw)

    def generation(self) -> int:
        return int(self._cache.get(_GENERATION, 0))

    def models(self) -> list[str]:
        names = {key[1] for key in self._keys() if isinstance(key, tuple) and key[0] == "versions"}
        return sorted(names)

    def _keys(self) -> Iterator[Any]:
        return iter(self._cache)

    def active_version(self, model: str) -> str | None:
        value = self._cache.get(("active", model))
        return None if value is None else str(value)

    def get(self, model: str, version: str | None = None) -> Artifact:
        """An artifact by version, or the active one when ``version`` is None."""
        if version is None:
            version = self.active_version(model)
            if version is None:
                raise ArtifactNotFound(f"model {model!r} has no active prompt version")
        version = self._resolve_version(model, version)
        raw = self._cache.get(("artifact", model, version))
        if raw is None:
            raise ArtifactNotFound(f"model {model!r} has no version {version!r}")
        return parse_artifact(raw, f"stored artifact {model}@{version}")

    def _resolve_version(self, model: str, version: str) -> str:
        """Accept a unique prefix of a version id, like git does."""
        known = [str(v["version"]) for v in self._json(("versions", model), [])]
        if version in known:
            return version
        matches = [v for v in known if v.startswith(version)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ArtifactNotFound(f"version prefix {version!r} of {model!r} is ambiguous: {', '.join(matches)}")
        raise ArtifactNotFound(f"model {model!r} has no version {version!r}")

    def versions(self, model: str) -> list[VersionInfo]:
        active = self.active_version(model)
        out = []
        for entry in self._json(("versions", model), []):
            artifact = self.get(model, entry["version"])
            out.append(
                VersionInfo(
                    version=entry["version"],
                    added_at=entry["added_at"],
                    active=entry["version"] == active,
                    method=artifact.provenance.method,
                    scores=dict(artifact.provenance.scores),
                    created_at=artifact.provenance.created_at.isoformat(),
                )
            )
        return out

    def history(self, model: str) -> list[dict[str, str]]:
        return list(self._json(("history", model), []))

    def active_artifacts(self) -> dict[str, Artifact]:
        """Every model's active artifact (what the proxy snapshots into memory)."""
        out = {}
        for model in self.models():
            version = self.active_version(model)
            if version is not None:
                out[model] = self.get(model, version)
        return out

    # -- writing ---------------------------------------------------------------

    def put(self, artifact: Artifact, activate: bool = False) -> Artifact:
        """Store an artifact version (idempotent: same content, same version)."""
        model = artifact.model
        with self._cache.transact():
            key = ("artifact", model, artifact.version)
            if key not in self._cache:
                self._cache.set(key, artifact.to_json())
                versions = self._json(("versions", model), [])
                versions.append({"version": artifact.version, "added_at": _now()})
                self._cache.set(("versions", model), orjson.dumps(versions))
            if activate:
                self._activate_locked(model, artifact.version, "activate")
        return artifact

    def activate(self, model: str, version: str) -> str:
        with self._cache.transact():
            resolved = self._resolve_version(model, version)
            self._activate_locked(model, resolved, "activate")
        return resolved

    def _activate_locked(self, model: str, version: str, action: str) -> None:
        self._cache.set(("active", model), version)
        history = self._json(("history", model), [])
        history.append({"version": version, "at": _now(), "action": action})
        self._cache.set(("history", model), orjson.dumps(history))
        self._cache.set(_GENERATION, self.generation() + 1)

    def rollback(self, model: str) -> str:
        """Re-activate the version that was active before the current one.

        Activations form a stack and a rollback pops it, so repeated rollbacks walk
        further back (C → B → A) instead of toggling between the last two versions.
        """
        with self._cache.transact():
            current = self.active_version(model)
            if current is None:
                raise NothingToRollBack(f"model {model!r} has no active version to roll back from")
            stack = _activation_stack(self._json(("history", model), []))
            while stack and stack[-1] == current:
                stack.pop()
            if not stack:
                raise NothingToRollBack(f"model {model!r} has no earlier active version")
            target = stack[-1]
            self._activate_locked(model, target, "rollback")
        return target

    def deactivate(self, model: str) -> None:
        with self._cache.transact():
            self._cache.delete(("active", model))
            self._cache.set(_GENERATION, self.generation() + 1)

    # -- import / export -------------------------------------------------------

    def export(self, model: str, path: Path, version: str | None = None) -> Artifact:
        artifact = self.get(model, version)
        write_atomic(path, artifact.to_json() + b"\n")
        return artifact

    def import_file(self, path: Path, activate: bool = False) -> Artifact:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InvalidArtifact(f"cannot read {path}: {exc.strerror or exc}") from exc
        return self.put(parse_artifact(raw, str(path)), activate=activate)


def _activation_stack(history: list[dict[str, str]]) -> list[str]:
    """Replay activations (push) and rollbacks (pop back to their target)."""
    stack: list[str] = []
    for entry in history:
        version = entry["version"]
        if entry.get("action") == "rollback" and stack:
            stack.pop()
            if stack and stack[-1] == version:
                continue
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name, so concurrent writers of the same path never share one.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 is too strict for an exported, shareable file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
