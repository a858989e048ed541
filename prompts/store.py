"""The versioned artifact store, on diskcache (SQLite underneath).

Records (schema 2; keys are JSON arrays as strings, see ``prompts/store_layout.py`` for
why every value is inline in SQLite, nothing is evicted and no value grows):

- ``["artifact", model, version]`` → artifact JSON. Immutable once written.
- ``["version", model, seq]`` → ``{"version", "added_at", "method", "scores", "created_at"}``,
  one row per version in insertion order (seq from 1), with the count in
  ``["count", "version", model]``; ``["version-seq", model, version]`` → seq, the exact index.
- ``["history", model, seq]`` → ``{"version", "at", "action", "below"}``, one row per
  activation or rollback, count in ``["count", "history", model]``.
- ``["eval-report", model, seq]`` → an eval report (``drpo eval --store``, the promotion
  gate): which versions were answered on which labelled prompts, refusal rates per label,
  the gate's verdict; count in ``["count", "eval-report", model]``.
- ``["audit", "*", seq]`` → ``{"at", "actor", "action", "model", "version"}``: every change made by a
  store opened with an ``actor`` (the CLI, the admin API), written in the same transaction as the
  change. The actor is a name (``cli:alice``, a key's configured name), never a credential.
- ``["split", model]`` → ``{"weights": {version: weight}}``: an A/B split over versions (replaced
  as a whole; it never grows with history). While set, requests for the model are spread over
  these versions instead of the active one.
- ``["refresh-run", model, seq]`` → a finished background refresh (``drpo worker``): start, end,
  outcome, scores, calls and tokens, the versions involved; count in ``["count", "refresh-run", model]``.
- ``["refresh-current", model]`` → the refresh run in progress for a model (at most one), replaced as
  it advances and deleted in the transaction that appends its finished record; a worker that was
  killed finds it on restart and resumes that run. ``["refresh-models"]`` lists models with runs.
- ``["active", model]`` → the active version id.
- ``["models"]`` → sorted JSON list of model ids with at least one version.
- ``["generation"]`` → counter bumped on every change of an active pointer.
- ``["schema"]`` → layout version; an older layout is migrated on open (``store_migrate``).

Activations form a stack, and rollback pops it (C → B → A). Rather than replaying the whole
history on each rollback, every history entry stands for the top of the stack after it and
links (``below``) to the entry standing for the element under it; the newest entry is the
top, so the history count doubles as the stack pointer and a rollback reads two or three rows.

Every change runs inside one ``cache.transact()``, one SQLite transaction with nothing
outside the database, so a reader in another process, or the store after a crash, sees
the state before a change or after it, never a mix. ``generation`` lets the proxy notice
a change with one cheap read instead of reloading every artifact.

With a shared registry (``registry: redis://...`` in the config file or ``DRPO_REGISTRY_URL``;
open the store with :func:`open_store`), the store is a mirror of Redis and every change is
published to it in that same transaction (``prompts/registry.py``); no method here knows.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from prompts.artifact import Artifact
from prompts.config import FileConfig, Settings
from prompts.errors import ArtifactNotFound, InvalidArtifact, NothingToRollBack, PromptsError, RegistryUnavailable
from prompts.registry import Registry
from prompts.store_layout import (
    GENERATION_KEY,
    MODELS_KEY,
    AppendLog,
    JournalingCache,
    active_key,
    artifact_key,
    key,
    load_json,
    open_cache,
    split_key,
    version_index_key,
)
from prompts.store_migrate import ensure_schema, version_summary

logger = logging.getLogger(__name__)


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

    def __init__(self, directory: Path | str, actor: str | None = None, registry: Registry | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = open_cache(self.directory)
        try:
            ensure_schema(self._cache)
        except BaseException:
            self._cache.close()
            raise
        self._versions = AppendLog(self._cache, "version")
        self._history = AppendLog(self._cache, "history")
        self._reports = AppendLog(self._cache, "eval-report")
        self._audit = AppendLog(self._cache, "audit")
        self._refreshes = AppendLog(self._cache, "refresh-run")
        self.actor = actor  # who changes go on record as; None: no audit entries
        self.registry = registry  # with one, every change is published to it (or refused)

    def close(self) -> None:
        self._cache.close()

    @contextmanager
    def _change(self) -> Iterator[None]:
        """One change: a local transaction, published to the registry in it when there is one."""
        if self.registry is None:
            with self._cache.transact():
                yield
        else:
            with self.registry.change(self._cache):
                yield

    def sync_registry(self) -> str | None:
        """Catch up with the registry now (None without one); raises :class:`RegistryUnavailable`."""
        return None if self.registry is None else self.registry.sync(self._cache)

    def follower_cache(self) -> JournalingCache:
        """The cache a :class:`prompts.registry.RegistryFollower` keeps in step."""
        return self._cache

    def __enter__(self) -> PromptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------

    def generation(self) -> int:
        return int(self._cache.get(GENERATION_KEY, 0))

    def models(self) -> list[str]:
        return [str(name) for name in load_json(self._cache, MODELS_KEY, [])]

    def active_version(self, model: str) -> str | None:
        value = self._cache.get(active_key(model))
        return None if value is None else str(value)

    def has_version(self, model: str, version: str) -> bool:
        """Whether ``version`` (a full id) is stored for ``model``: one read."""
        return self._cache.get(version_index_key(model, version)) is not None

    def get(self, model: str, version: str | None = None) -> Artifact:
        """An artifact by version, or the active one when ``version`` is None."""
        if version is None:
            version = self.active_version(model)
            if version is None:
                raise ArtifactNotFound(f"model {model!r} has no active prompt version")
        return self._load(model, self._resolve_version(model, version))

    def _load(self, model: str, version: str) -> Artifact:
        raw = self._cache.get(artifact_key(model, version))
        if raw is None:
            raise ArtifactNotFound(f"model {model!r} has no version {version!r}")
        return parse_artifact(raw, f"stored artifact {model}@{version}")

    def _resolve_version(self, model: str, version: str) -> str:
        """Accept a unique prefix of a version id, like git does (exact ids need one read)."""
        if self._cache.get(version_index_key(model, version)) is not None:
            return version
        matches = [str(r["version"]) for _, r in self._versions.entries(model) if str(r["version"]).startswith(version)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ArtifactNotFound(f"version prefix {version!r} of {model!r} is ambiguous: {', '.join(matches)}")
        raise ArtifactNotFound(f"model {model!r} has no version {version!r}")

    def versions(self, model: str) -> list[VersionInfo]:
        active = self.active_version(model)
        return [
            VersionInfo(
                version=str(row["version"]),
                added_at=str(row["added_at"]),
                active=row["version"] == active,
                method=str(row["method"]),
                scores={name: float(value) for name, value in row["scores"].items()},
                created_at=str(row["created_at"]),
            )
            for _, row in self._versions.entries(model)
        ]

    def newer_versions(self, model: str, version: str | None, limit: int) -> list[str]:
        """Up to ``limit`` versions stored after ``version`` (after nothing: any), newest first.

        Reads at most ``limit`` rows from the end of the version log, whatever its length."""
        floor = int(self._cache.get(version_index_key(model, version), 0)) if version else 0
        out: list[str] = []
        for seq in range(self._versions.count(model), floor, -1):
            if len(out) >= limit:
                break
            row = self._versions.get(model, seq)
            if row is not None and row["version"] != version:
                out.append(str(row["version"]))
        return out

    def history(self, model: str) -> list[dict[str, str]]:
        return [
            {name: str(row[name]) for name in ("version", "at", "action")} for _, row in self._history.entries(model)
        ]

    def active_artifacts(self) -> dict[str, Artifact]:
        """Every model's active artifact (what the proxy snapshots into memory)."""
        out = {}
        for model in self.models():
            version = self.active_version(model)
            if version is not None:
                out[model] = self._load(model, version)
        return out

    # -- writing ---------------------------------------------------------------

    def put(self, artifact: Artifact, activate: bool = False) -> Artifact:
        """Store an artifact version (idempotent: same content, same version)."""
        model = artifact.model
        with self._change():
            if self._cache.get(version_index_key(model, artifact.version)) is None:
                self._record_audit("import", model, artifact.version)
                self._cache.set(artifact_key(model, artifact.version), artifact.to_json())
                seq = self._versions.append(model, version_summary(artifact, _now()))
                self._cache.set(version_index_key(model, artifact.version), seq)
                models = self.models()
                if model not in models:
                    self._cache.set(MODELS_KEY, orjson.dumps(sorted([*models, model])))
            if activate:
                self._activate_locked(model, artifact.version)
        return artifact

    def activate(self, model: str, version: str, action: str = "activate") -> str:
        """Make ``version`` active; ``action`` names how in the history and audit log (e.g. "promote")."""
        with self._change():
            resolved = self._resolve_version(model, version)
            self._activate_locked(model, resolved, action)
        return resolved

    def _activate_locked(self, model: str, version: str, action: str = "activate") -> None:
        """Push ``version`` on the activation stack unless it is already on top."""
        last = self._history.last(model)
        if last is None:
            below = 0
        else:
            seq, top = last
            below = int(top["below"]) if top["version"] == version else seq
        self._record_activation(model, version, action, below)

    def _record_audit(self, action: str, model: str, version: str | None) -> None:
        if self.actor is not None:
            entry = {"at": _now(), "actor": self.actor, "action": action, "model": model, "version": version}
            self._audit.append("*", entry)

    def audit_log(self, model: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first (the last ``limit`` of them; only ``model``'s if given)."""
        entries = [row for _, row in self._audit.entries("*") if model is None or row.get("model") == model]
        return entries[-limit:] if limit else entries

    def _record_activation(self, model: str, version: str, action: str, below: int) -> None:
        self._record_audit(action, model, version)
        self._cache.set(active_key(model), version)
        self._history.append(model, {"version": version, "at": _now(), "action": action, "below": below})
        self._cache.set(GENERATION_KEY, self.generation() + 1)

    def rollback(self, model: str) -> str:
        """Re-activate the version that was active before the current one.

        Activations form a stack and a rollback pops it, so repeated rollbacks walk
        further back (C → B → A) instead of toggling between the last two versions.
        """
        with self._change():
            current = self.active_version(model)
            if current is None:
                raise NothingToRollBack(f"model {model!r} has no active version to roll back from")
            node = self._history.count(model)
            entry = self._history.get(model, node) if node else None
            while entry is not None and entry["version"] == current:
                below = int(entry["below"])
                if below >= node:
                    raise PromptsError(f"activation history of {model!r} is corrupt at entry {node}")
                node = below
                entry = self._history.get(model, node) if node else None
            if entry is None:
                raise NothingToRollBack(f"model {model!r} has no earlier active version")
            target = str(entry["version"])
            self._record_activation(model, target, "rollback", int(entry["below"]))
        return target

    def deactivate(self, model: str) -> None:
        with self._change():
            self._record_audit("deactivate", model, None)
            self._cache.delete(active_key(model))
            self._cache.set(GENERATION_KEY, self.generation() + 1)

    # -- A/B splits --------------------------------------------------------------

    def set_split(self, model: str, weights: dict[str, int]) -> dict[str, int]:
        """Serve ``model`` from several versions in proportion to ``weights`` (ids or prefixes)."""
        if len(weights) < 1 or any(int(w) <= 0 for w in weights.values()):
            raise PromptsError("a split needs at least one version, each with a positive weight")
        with self._change():
            resolved: dict[str, int] = {}
            for version, weight in weights.items():
                full = self._resolve_version(model, version)
                resolved[full] = resolved.get(full, 0) + int(weight)
            self._record_audit("split " + " ".join(f"{v}={w}" for v, w in resolved.items()), model, None)
            self._cache.set(split_key(model), orjson.dumps({"weights": resolved, "at": _now()}))
            self._cache.set(GENERATION_KEY, self.generation() + 1)
        return resolved

    def clear_split(self, model: str) -> None:
        with self._change():
            if self._cache.get(split_key(model)) is not None:
                self._record_audit("split cleared", model, None)
                self._cache.delete(split_key(model))
                self._cache.set(GENERATION_KEY, self.generation() + 1)

    def split(self, model: str) -> dict[str, int] | None:
        raw = self._cache.get(split_key(model))
        return None if raw is None else {str(v): int(w) for v, w in orjson.loads(raw)["weights"].items()}

    def active_splits(self) -> dict[str, list[tuple[int, Artifact]]]:
        """Per model with a split: (weight, artifact) for each of its versions (the proxy's snapshot)."""
        out = {}
        for model in self.models():
            weights = self.split(model)
            if weights:
                out[model] = [(weight, self._load(model, version)) for version, weight in weights.items()]
        return out

    def version_count(self, model: str) -> int:
        """How many versions ``model`` has (one read, whatever the count)."""
        return self._versions.count(model)

    # -- eval reports ----------------------------------------------------------

    def add_eval_report(self, model: str, report: dict[str, Any]) -> str:
        """Keep an eval report; its id is ``MODEL#SEQ``. The versions it covers are indexed from it."""
        versions = sorted({str(c["version"]) for c in report.get("conditions", []) if c.get("version")})
        record = {**report, "stored_at": _now(), "versions": versions}
        with self._change():
            seq = self._reports.append(model, record)
        return f"{model}#{seq}"

    def eval_reports(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """Stored reports of a model, oldest first; only those that evaluated ``version`` if given."""
        out = []
        for seq, record in self._reports.entries(model):
            if version is None or version in record.get("versions", []):
                out.append({"id": f"{model}#{seq}", **record})
        return out

    # -- background refresh runs -------------------------------------------------

    def begin_refresh(self, model: str, **fields: Any) -> dict[str, Any]:
        """Record that a refresh of ``model`` started; fails if one is already in progress."""
        with self._change():
            if self._cache.get(_refresh_current_key(model)) is not None:
                raise PromptsError(f"a refresh of {model!r} is already in progress")
            record = {
                "id": f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}",
                "model": model,
                "started_at": _now(),
                "ended_at": None,
                "outcome": "running",
                **fields,
            }
            self._cache.set(_refresh_current_key(model), orjson.dumps(record))
            models = self.refresh_models()
            if model not in models:
                self._cache.set(_REFRESH_MODELS_KEY, orjson.dumps(sorted([*models, model])))
        return record

    def update_refresh(self, model: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the run in progress (e.g. the optimizer's run id once known)."""
        with self._change():
            current = self.current_refresh(model)
            if current is None:
                raise PromptsError(f"no refresh of {model!r} is in progress")
            record = {**current, **fields}
            self._cache.set(_refresh_current_key(model), orjson.dumps(record))
        return record

    def finish_refresh(self, model: str, outcome: str, **fields: Any) -> dict[str, Any]:
        """Close the run in progress with ``outcome``; its record moves to the model's run log."""
        with self._change():
            current = self.current_refresh(model)
            if current is None:
                raise PromptsError(f"no refresh of {model!r} is in progress")
            record = {**current, "ended_at": _now(), **fields, "outcome": outcome}
            self._refreshes.append(model, record)
            self._cache.delete(_refresh_current_key(model))
        return record

    def current_refresh(self, model: str) -> dict[str, Any] | None:
        raw = self._cache.get(_refresh_current_key(model))
        return None if raw is None else dict(orjson.loads(raw))

    def refresh_runs(self, model: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Finished runs of ``model``, newest first (at most ``limit``), after the one in progress."""
        count = self._refreshes.count(model)
        first = max(1, count - limit + 1) if limit else 1
        out = [r for r in (self._refreshes.get(model, seq) for seq in range(count, first - 1, -1)) if r is not None]
        current = self.current_refresh(model)
        return ([current] if current else []) + out

    def last_refresh(self, model: str) -> dict[str, Any] | None:
        """The newest run of ``model``: the one in progress, else the last finished one."""
        last = self._refreshes.last(model)
        return self.current_refresh(model) or (last[1] if last else None)

    def refresh_models(self) -> list[str]:
        return [str(name) for name in load_json(self._cache, _REFRESH_MODELS_KEY, [])]

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


_REFRESH_MODELS_KEY = key("refresh-models")


def registry_url(settings: Settings, file_config: FileConfig | None = None) -> str | None:
    """The shared registry, if any: ``DRPO_REGISTRY_URL``, else the config file's ``registry``."""
    if settings.registry_url:
        return settings.registry_url
    return (file_config if file_config is not None else settings.file_config()).registry


def open_store(
    settings: Settings,
    actor: str | None = None,
    *,
    directory: Path | None = None,
    file_config: FileConfig | None = None,
) -> PromptStore:
    """The store every command and service opens: local, mirrored to the registry if one is configured.

    With a registry it catches up once on open, so what it reads is the shared state; when
    Redis is down it says so and reads this machine's copy (changes are then refused).
    """
    return open_store_at(directory or settings.store_dir, registry_url(settings, file_config), actor)


def open_store_at(directory: Path, registry: str | None, actor: str | None = None) -> PromptStore:
    """:func:`open_store` for a caller with a directory and a registry URL instead of settings."""
    store = PromptStore(directory, actor, Registry.shared(registry) if registry else None)
    try:
        store.sync_registry()
    except RegistryUnavailable as exc:
        logger.warning("%s; reading this machine's copy (changes are refused until it is back)", exc.reason)
    except BaseException:
        store.close()
        raise
    return store


def _refresh_current_key(model: str) -> str:
    return key("refresh-current", model)


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
