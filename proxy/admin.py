"""The admin API under ``/admin``: a FastAPI sub-application beside the raw-ASGI hot path.

Mounted only when ``DRPO_ADMIN_KEY`` is set (``/admin`` is 404 otherwise). Every route needs
``Authorization: Bearer <admin key>`` (compared in constant time); a client key never opens it.
Changes are written to the store's audit log as ``admin:<DRPO_ADMIN_KEY_NAME>``, never the key.

Model ids may contain ``/`` (``org/model``), so they travel as the ``model`` query parameter.
The OpenAPI schema is ``/admin/openapi.json``; the docs page ``/admin/docs`` serves Swagger UI
from files inside the package (no CDN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from prompts.defaults import DEFAULT_MODEL_ID, default_artifact
from prompts.diff import artifact_diff
from prompts.errors import ArtifactNotFound, NothingToRollBack, PromptsError
from prompts.served import artifact_by_spec
from prompts.store import PromptStore
from proxy.auth import bearer_token, matches_any


class ModelState(BaseModel):
    model: str
    active: str | None
    versions: int
    builtin_default: bool = False
    split: dict[str, int] | None = None


class VersionSummary(BaseModel):
    version: str
    added_at: str
    created_at: str
    method: str
    scores: dict[str, float]
    active: bool


class VersionDetail(BaseModel):
    artifact: dict[str, Any]
    active: bool
    eval_reports: list[dict[str, Any]]


class ActivateRequest(BaseModel):
    version: str


class Activation(BaseModel):
    model: str
    active: str
    previous: str | None


class SplitRequest(BaseModel):
    weights: dict[str, int]


class SplitState(BaseModel):
    model: str
    weights: dict[str, int] | None


class AuditEntry(BaseModel):
    at: str
    actor: str
    action: str
    model: str
    version: str | None = None


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _AdminError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def create_admin_app(store_dir: Callable[[], Path], admin_key: str, key_name: str) -> FastAPI:
    """The admin sub-application; ``store_dir`` gives the proxy's store directory at request time."""
    app = FastAPIOffline(
        title="drpo-proxy admin",
        description="Inspect and change prompt versions. Bearer auth with DRPO_ADMIN_KEY.",
        version="1",
    )
    expected = [admin_key.encode()]
    actor = f"admin:{key_name}"

    def authorised(request: Request) -> None:
        token = bearer_token(request.headers.get("authorization", "").encode() or None)
        if not matches_any(token, expected):
            raise _AdminError(401, "Missing or incorrect admin key", "authentication_error")

    @contextmanager
    def store() -> Iterator[PromptStore]:
        with PromptStore(store_dir(), actor=actor) as opened:
            yield opened

    @app.exception_handler(_AdminError)
    async def admin_error(request: Request, exc: _AdminError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_error(exc.message, exc.kind), status_code=exc.status, headers=headers)

    @app.exception_handler(PromptsError)
    async def prompts_error(request: Request, exc: PromptsError) -> JSONResponse:
        status = 404 if isinstance(exc, ArtifactNotFound) else 409 if isinstance(exc, NothingToRollBack) else 400
        return JSONResponse(_error(str(exc), "invalid_request_error"), status_code=status)

    guard = [Depends(authorised)]

    @app.get("/models", dependencies=guard)
    def models() -> list[ModelState]:
        """Every model id with its active version; ``*`` is the built-in default served to the rest."""
        with store() as s:
            out = [
                ModelState(model=DEFAULT_MODEL_ID, active=default_artifact().version, versions=1, builtin_default=True)
            ]
            out += [
                ModelState(model=m, active=s.active_version(m), versions=s.version_count(m), split=s.split(m))
                for m in s.models()
            ]
        return out

    @app.get("/versions", dependencies=guard)
    def versions(model: str = Query(...)) -> list[VersionSummary]:
        with store() as s:
            return [VersionSummary(**info.__dict__) for info in s.versions(model)]

    @app.get("/version", dependencies=guard)
    def version(model: str = Query(...), version: str | None = Query(None)) -> VersionDetail:
        """One version (default: the active one) with its provenance and stored eval reports."""
        with store() as s:
            artifact = s.get(model, version)
            return VersionDetail(
                artifact=artifact.model_dump(mode="json"),
                active=s.active_version(model) == artifact.version,
                eval_reports=s.eval_reports(model, artifact.version),
            )

    @app.get("/diff", dependencies=guard)
    def diff(model: str = Query(...), a: str = Query(...), b: str = Query(...)) -> dict[str, str]:
        """A unified diff of two versions (``active`` and ``default`` are accepted too)."""
        with store() as s:
            first, second = artifact_by_spec(s, model, a)[0], artifact_by_spec(s, model, b)[0]
        return {"a": first.version, "b": second.version, "diff": artifact_diff(first, second)}

    @app.post("/activate", dependencies=guard)
    def activate(body: ActivateRequest, model: str = Query(...)) -> Activation:
        with store() as s:
            previous = s.active_version(model)
            return Activation(model=model, active=s.activate(model, body.version), previous=previous)

    @app.post("/rollback", dependencies=guard)
    def rollback(model: str = Query(...)) -> Activation:
        with store() as s:
            previous = s.active_version(model)
            return Activation(model=model, active=s.rollback(model), previous=previous)

    @app.put("/split", dependencies=guard)
    def set_split(body: SplitRequest, model: str = Query(...)) -> SplitState:
        """Serve the model from several versions by weight (sticky per request `user` / x-drpo-session)."""
        with store() as s:
            return SplitState(model=model, weights=s.set_split(model, body.weights))

    @app.delete("/split", dependencies=guard)
    def clear_split(model: str = Query(...)) -> SplitState:
        with store() as s:
            s.clear_split(model)
            return SplitState(model=model, weights=None)

    @app.get("/audit", dependencies=guard)
    def audit(model: str | None = Query(None), limit: int = Query(100, ge=1, le=10_000)) -> list[AuditEntry]:
        with store() as s:
            return [AuditEntry(**entry) for entry in s.audit_log(model, limit)]

    return app
