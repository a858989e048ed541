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
from pydantic import BaseModel, ConfigDict

from prompts.defaults import DEFAULT_MODEL_ID, default_artifact
from prompts.diff import artifact_diff
from prompts.errors import ArtifactNotFound, NothingToRollBack, PromptsError, RegistryConflict, RegistryUnavailable
from prompts.registry import Registry
from prompts.served import artifact_by_spec
from prompts.store import PromptStore
from proxy.auth import bearer_token, matches_any
from proxy.auth_throttle import AuthThrottle, TooManyGuesses
from proxy.jobs import Job, JobBusy, JobRunner


class ModelState(BaseModel):
    model: str
    active: str | None
    versions: int
    builtin_default: bool = False
    split: dict[str, int] | None = None
    # Versions stored after the active one and not active: what a refresh or an import left to promote.
    candidates: list[str] = []
    refresh: RefreshRun | None = None  # the newest refresh run, if any


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


class PromoteRequest(BaseModel):
    version: str
    force: bool = False  # activate without the gate


class RefreshRun(BaseModel):
    """A background refresh (``drpo worker``); ``outcome`` is ``running`` while it is in progress."""

    model_config = ConfigDict(extra="allow")

    id: str
    model: str
    started_at: str
    ended_at: str | None = None
    outcome: str
    trigger: str | None = None
    stage: str | None = None
    candidate: str | None = None
    baseline: str | None = None
    calls: int | None = None
    tokens: int | None = None
    reason: str | None = None
    error: str | None = None


class AuditEntry(BaseModel):
    at: str
    actor: str
    action: str
    model: str
    version: str | None = None


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _AdminError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def create_admin_app(
    store_dir: Callable[[], Path],
    admin_key: str,
    key_name: str,
    jobs: JobRunner | None = None,
    registry: Callable[[], Registry | None] = lambda: None,
    throttle: AuthThrottle | None = None,
) -> FastAPI:
    """The admin sub-application; ``store_dir`` gives the proxy's store directory at request time.

    ``jobs`` runs promotions through the gate and refreshes as background processes (without it,
    those endpoints answer 503). ``throttle`` counts wrong keys per client address (shared with
    the dashboard's login when the proxy builds both)."""
    app = FastAPIOffline(
        title="drpo-proxy admin",
        description="Inspect and change prompt versions. Bearer auth with DRPO_ADMIN_KEY.",
        version="1",
    )
    expected = [admin_key.encode()]
    actor = f"admin:{key_name}"
    guesses = throttle or AuthThrottle()

    def authorised(request: Request) -> None:
        token = bearer_token(request.headers.get("authorization", "").encode() or None)
        try:
            accepted = guesses.check(request.client, lambda: matches_any(token, expected) or None)
        except TooManyGuesses as exc:
            message = f"Too many wrong admin keys from this address; try again in {exc.retry_after} s"
            raise _AdminError(429, message, "rate_limit_error", {"retry-after": str(exc.retry_after)}) from None
        if accepted is None:
            challenge = {"www-authenticate": "Bearer"}
            raise _AdminError(401, "Missing or incorrect admin key", "authentication_error", challenge)

    @contextmanager
    def store() -> Iterator[PromptStore]:
        with PromptStore(store_dir(), actor=actor, registry=registry()) as opened:
            yield opened

    @app.exception_handler(_AdminError)
    async def admin_error(request: Request, exc: _AdminError) -> JSONResponse:
        return JSONResponse(_error(exc.message, exc.kind), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(PromptsError)
    async def prompts_error(request: Request, exc: PromptsError) -> JSONResponse:
        status = 404 if isinstance(exc, ArtifactNotFound) else 409 if isinstance(exc, NothingToRollBack) else 400
        if isinstance(exc, RegistryUnavailable | RegistryConflict):  # the shared registry refused: retry later
            status = 503 if isinstance(exc, RegistryUnavailable) else 409
        headers = {"retry-after": "1"} if status == 503 else None
        return JSONResponse(_error(str(exc), "invalid_request_error"), status_code=status, headers=headers)

    guard = [Depends(authorised)]

    @app.get("/models", dependencies=guard)
    def models() -> list[ModelState]:
        """Every model id with its active version; ``*`` is the built-in default served to the rest."""
        with store() as s:
            out = [
                ModelState(model=DEFAULT_MODEL_ID, active=default_artifact().version, versions=1, builtin_default=True)
            ]
            for m in sorted(set(s.models()) | set(s.refresh_models())):
                active = s.active_version(m)
                last = s.last_refresh(m)
                out.append(
                    ModelState(
                        model=m,
                        active=active,
                        versions=s.version_count(m),
                        split=s.split(m),
                        candidates=_candidates(s, m, active),
                        refresh=RefreshRun(**last) if last else None,
                    )
                )
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

    def runner() -> JobRunner:
        if jobs is None:
            raise _AdminError(503, "background jobs are not available in this process", "server_error")
        return jobs

    def start(launch: Callable[[], Job]) -> JSONResponse:
        try:
            job = launch()
        except JobBusy as exc:
            raise _AdminError(409, str(exc)) from exc
        return JSONResponse(job.model_dump(mode="json"), status_code=202, headers={"location": f"jobs/{job.id}"})

    @app.post("/promote", dependencies=guard, status_code=202, response_model=Job)
    def promote(body: PromoteRequest, model: str = Query(...)) -> JSONResponse:
        """Activate a version only if it passes the promotion gate (a background job: 202, then poll
        ``/admin/jobs/{id}``); with ``force`` it is activated at once, without the gate (200)."""
        with store() as s:
            version = artifact_by_spec(s, model, body.version)[0].version
            if body.force:
                previous = s.active_version(model)
                active = s.activate(model, version, action="promote --force")
                return JSONResponse(Activation(model=model, active=active, previous=previous).model_dump())
        return start(lambda: runner().start_promote(model, version, actor))

    @app.post("/refresh", dependencies=guard, status_code=202, response_model=Job)
    def refresh(model: str = Query(...)) -> JSONResponse:
        """Run the model's refresh now (optimize → eval → gate → activate or keep), as a background job."""
        return start(lambda: runner().start_refresh(model, actor))

    @app.get("/jobs", dependencies=guard)
    def list_jobs() -> list[Job]:
        """Promotion and refresh jobs started by this proxy process, newest first."""
        return runner().recent()

    @app.get("/jobs/{job_id}", dependencies=guard)
    def get_job(job_id: str) -> Job:
        found = runner().get(job_id)
        if found is None:
            raise _AdminError(404, f"no job {job_id!r} in this proxy process")
        return found

    @app.get("/refresh-runs", dependencies=guard)
    def refresh_runs(model: str | None = Query(None), limit: int = Query(50, ge=1, le=10_000)) -> list[RefreshRun]:
        """Refresh runs, newest first (the one in progress first): outcome, scores, calls, tokens, versions."""
        with store() as s:
            models = [model] if model else s.refresh_models()
            return [RefreshRun(**run) for m in models for run in s.refresh_runs(m, limit)]

    @app.get("/audit", dependencies=guard)
    def audit(model: str | None = Query(None), limit: int = Query(100, ge=1, le=10_000)) -> list[AuditEntry]:
        with store() as s:
            return [AuditEntry(**entry) for entry in s.audit_log(model, limit)]

    return app


def _candidates(store: PromptStore, model: str, active: str | None, limit: int = 5) -> list[str]:
    """Versions stored after the active one (all, when none is active), newest first."""
    return store.newer_versions(model, active, limit)
