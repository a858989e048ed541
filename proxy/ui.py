"""The dashboard under ``/ui``: server-rendered pages over the store and the optimizer's runs.

Pages: models (active, candidate and A/B versions; ``*`` is the built-in default), a version
(prompt, examples, diff against what is served), optimization runs (reward per beam level,
calls and tokens), eval reports (tables and bar charts with intervals) and refresh runs.
Everything is HTML and inline SVG rendered here, styled by a stylesheet inside the package:
no script at all, nothing fetched from elsewhere (the Content-Security-Policy says so too).

Who sees what (see :mod:`proxy.ui_session`): reading is open unless client keys are
configured, then it needs a login with a client key or the admin key. Activate, roll back and
promote need a session opened with the admin key, and every such POST carries the session's
form token. Changes are audited as ``admin:<DRPO_ADMIN_KEY_NAME>``. Promotion goes through the
gate: a background ``drpo prompts promote`` job (the proxy cannot import the optimizer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.staticfiles import StaticFiles

from prompts.artifact import Artifact
from prompts.defaults import DEFAULT_MODEL_ID, default_artifact
from prompts.diff import artifact_diff
from prompts.errors import ArtifactNotFound, NothingToRollBack, PromptsError, RegistryConflict, RegistryUnavailable
from prompts.served import served_artifact
from prompts.store import PromptStore
from proxy.auth_throttle import AuthThrottle, TooManyGuesses
from proxy.jobs import JobBusy, JobRunner
from proxy.ui_charts import bar_chart, line_chart
from proxy.ui_data import (
    judge_groups,
    judge_rows,
    list_runs,
    load_run,
    node_mean_reward,
    refusal_groups,
    report_labels,
    reward_curve,
    version_rows,
)
from proxy.ui_session import COOKIE_NAME, SESSION_SECONDS, Role, Session, UiAccess

MAX_FORM_BYTES = 16 * 1024
CHART_WIDTH = 500  # two charts side by side in the page width
SECURITY_HEADERS = {
    # No script anywhere; styles and images only from here; never framed (clickjacking on the buttons).
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@dataclass(frozen=True)
class Viewer:
    role: Role | None
    session: Session | None
    form_token: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class _PageError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _LoginNeeded(Exception):
    pass


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("proxy", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{float(v):.1%}"
    env.filters["when"] = lambda v: str(v or "")[:16].replace("T", " ")  # ISO 8601 to the minute
    env.filters["num"] = lambda v, digits=2: "–" if v is None else f"{float(v):.{digits}f}"
    return env


def _diff_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith(("+++", "---")):
            kind = "head"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append((kind, line))
    return out


def _safe_next(value: str | None, root: str) -> str | None:
    """Only a path inside the dashboard (never another site) is a place to go back to."""
    if value and value.startswith(root + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


def create_ui_app(
    open_store: Callable[[str | None], PromptStore],
    runs_dir: Path,
    access: UiAccess,
    actor: str,
    jobs: JobRunner,
    throttle: AuthThrottle | None = None,
) -> FastAPI:
    """The dashboard app (mount it at ``/ui``).

    ``open_store(actor)`` opens the proxy's store for one request (``actor``: who changes go on
    record as, None for reading); ``actor`` here is the admin key's name, ``admin:<name>``.
    ``throttle`` counts wrong keys (login form and bearer) per client address.
    """
    app = FastAPI(title="drpo-proxy dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    env = _templates()
    app.mount("/static", StaticFiles(packages=[("proxy", "static")]), name="static")

    @contextmanager
    def store(writer: bool = False) -> Iterator[PromptStore]:
        with open_store(actor if writer else None) as opened:
            yield opened

    guesses = throttle or AuthThrottle()

    def checked(request: Request, role_of: Callable[[], Role | None]) -> Role | None:
        """A key's role, counting wrong keys per client address; 429 once there were too many."""
        try:
            return guesses.check(request.client, role_of)
        except TooManyGuesses as exc:
            message = f"Too many wrong keys from this address. Try again in {exc.retry_after} s."
            raise _PageError(429, message, {"retry-after": str(exc.retry_after)}) from None

    def viewer(request: Request) -> Viewer:
        # Worked out once per request: a wrong bearer key counts as one guess, not one per lookup.
        seen: Viewer | None = getattr(request.state, "viewer", None)
        if seen is None:
            seen = request.state.viewer = _viewer(request)
        return seen

    def _viewer(request: Request) -> Viewer:
        session = access.verify(request.cookies.get(COOKIE_NAME))
        if session is not None:
            return Viewer(session.role, session, access.form_token(session))
        authorization = request.headers.get("authorization")
        if not authorization:
            return Viewer(None, None, None)
        return Viewer(checked(request, lambda: access.role_for_bearer(authorization)), None, None)

    def reader(request: Request) -> Viewer:
        seen = viewer(request)
        if access.reading_is_private and seen.role is None:
            raise _LoginNeeded()
        return seen

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        base = root(request)

        def url(path: str, **params: Any) -> str:
            query = {k: v for k, v in params.items() if v is not None}
            return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")

        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        html = env.get_template(name).render(
            url=url,
            here=here,
            viewer=context.pop("viewer", None) or viewer(request),
            admin_enabled=access.admin_enabled,
            default_model=DEFAULT_MODEL_ID,
            **context,
        )
        return HTMLResponse(html, status_code=code)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("cache-control", "no-store")  # pages show prompts: no shared caches
        return response

    @app.exception_handler(_PageError)
    async def page_error(request: Request, exc: _PageError) -> HTMLResponse:
        # A refused key has no viewer to work out (that is what raised); show the page as to anyone.
        anonymous = Viewer(None, None, None) if exc.status == 429 else None
        page = render(request, "error.html", exc.status, message=exc.message, status=exc.status, viewer=anonymous)
        page.headers.update(exc.headers or {})
        return page

    @app.exception_handler(_LoginNeeded)
    async def login_needed(request: Request, exc: _LoginNeeded) -> Response:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{root(request)}/login?{urlencode({'next': here})}", status_code=303)

    @app.exception_handler(PromptsError)
    async def prompts_error(request: Request, exc: PromptsError) -> HTMLResponse:
        status = 400
        if isinstance(exc, ArtifactNotFound):
            status = 404
        elif isinstance(exc, NothingToRollBack | RegistryConflict):
            status = 409
        elif isinstance(exc, RegistryUnavailable):
            status = 503  # nothing was changed: the shared registry is down
        return render(request, "error.html", status, message=str(exc), status=status)

    # -- reading -------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def models_page(request: Request) -> HTMLResponse:
        seen = reader(request)
        with store() as s:
            names = sorted(set(s.models()) | set(s.refresh_models()))
            rows = [
                {
                    "model": m,
                    "active": s.active_version(m),
                    "versions": version_rows(s, m),
                    "split": s.split(m),
                    "refresh": s.last_refresh(m),
                }
                for m in names
            ]
        return render(request, "models.html", viewer=seen, rows=rows, default=default_artifact())

    @app.get("/model", response_class=HTMLResponse)
    def model_page(request: Request, model: str) -> Response:
        seen = reader(request)
        if model == DEFAULT_MODEL_ID:
            return RedirectResponse(f"{root(request)}/version?{urlencode({'model': model})}", status_code=303)
        with store() as s:
            if model not in s.models() and model not in s.refresh_models():
                raise _PageError(404, f"no model {model!r} in the store")
            context: dict[str, Any] = {
                "model": model,
                "active": s.active_version(model),
                "rows": version_rows(s, model),
                "split": s.split(model),
                "reports": list(reversed(s.eval_reports(model))),
                "refreshes": s.refresh_runs(model, limit=20),
                "audit": list(reversed(s.audit_log(model, limit=20))),
            }
        return render(request, "model.html", viewer=seen, **context)

    @app.get("/version", response_class=HTMLResponse)
    def version_page(request: Request, model: str, version: str | None = None) -> HTMLResponse:
        seen = reader(request)
        with store() as s:
            if model == DEFAULT_MODEL_ID:
                artifact, served, builtin, reports = default_artifact(), default_artifact(), True, []
            else:
                artifact = s.get(model, version) if version else served_artifact(s, model)[0]
                served, builtin = served_artifact(s, model)
                reports = list(reversed(s.eval_reports(model, artifact.version)))
            is_active = not builtin and s.active_version(model) == artifact.version
            split = s.split(model) if model != DEFAULT_MODEL_ID else None
        run_id = artifact.provenance.details.get("run_id")
        run = load_run(runs_dir, str(run_id)) if run_id else None
        diff = "" if served.version == artifact.version else artifact_diff(served, artifact)
        return render(
            request,
            "version.html",
            viewer=seen,
            artifact=artifact,
            builtin=artifact.model == DEFAULT_MODEL_ID,
            served=served,
            served_is_default=builtin,
            is_active=is_active,
            in_split=bool(split and artifact.version in split),
            diff=_diff_lines(diff),
            reports=reports,
            run_id=run_id,
            run=run,
            scores=_provenance_rows(artifact),
        )

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        seen = reader(request)
        return render(request, "runs.html", viewer=seen, runs=list_runs(runs_dir))

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, id: str) -> HTMLResponse:
        seen = reader(request)
        run = load_run(runs_dir, id)
        if run is None:
            raise _PageError(404, f"no readable optimization run {id!r}")
        series, markers = reward_curve(run)
        chart = line_chart(
            "Reward per beam level (mean judge/alignment reward along each path, 1-5)",
            series,
            markers,
            x_label="beam level",
            low=1.0,
            high=5.0,
        )
        nodes = sorted(run.nodes, key=lambda n: (int(n.get("level") or 0), str(n.get("id"))))
        return render(request, "run.html", viewer=seen, run=run, chart=chart, nodes=nodes, mean_reward=node_mean_reward)

    @app.get("/report", response_class=HTMLResponse)
    def report_page(request: Request, model: str, id: str) -> HTMLResponse:
        seen = reader(request)
        with store() as s:
            report = next((r for r in s.eval_reports(model) if r.get("id") == id), None)
        if report is None:
            raise _PageError(404, f"no eval report {id!r} for {model!r}")
        names, groups = refusal_groups(report)
        refusal = bar_chart(
            "Refusal rate per label (95% interval)", names, groups, 0.0, 1.0, percent=True, width=CHART_WIDTH
        )
        judge_charts = []
        for label in report_labels(report):
            names, groups = judge_groups(report, label)
            if groups:
                title = f"Judge scores on {label} prompts (1-5, 95% interval)"
                judge_charts.append((label, bar_chart(title, names, groups, 0.0, 5.0, width=CHART_WIDTH)))
        return render(
            request,
            "report.html",
            viewer=seen,
            model=model,
            report=report,
            labels=report_labels(report),
            refusal_chart=refusal,
            judge_charts=judge_charts,
            judge_rows=judge_rows(report),
        )

    @app.get("/refresh", response_class=HTMLResponse)
    def refresh_page(request: Request) -> HTMLResponse:
        seen = reader(request)
        with store() as s:
            runs = {m: s.refresh_runs(m, limit=50) for m in s.refresh_models()}
        return render(request, "refresh.html", viewer=seen, runs=runs)

    # -- sessions ------------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None) -> HTMLResponse:
        return render(request, "login.html", next=_safe_next(next, root(request)), error=None)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await _form(request)
        role = checked(request, lambda: access.role_for_key(form.get("key", "")))
        target = _safe_next(form.get("next"), root(request))
        if role is None:
            return render(request, "login.html", 401, next=target, error="That key is not accepted here.")
        response = RedirectResponse(target or f"{root(request)}/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            access.issue(role),
            max_age=SESSION_SECONDS,
            path=f"{root(request)}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await _admin_form(request, admin=False)
        response = RedirectResponse(f"{root(request)}/", status_code=303)
        response.delete_cookie(COOKIE_NAME, path=f"{root(request)}/", httponly=True, samesite="strict")
        return response

    # -- changes -------------------------------------------------------------------------------------

    async def _admin_form(request: Request, admin: bool = True) -> dict[str, str]:
        """The submitted form, if it comes from a session (an admin one unless ``admin`` is False)."""
        form = await _form(request)
        seen = viewer(request)
        if seen.session is None or (admin and not seen.is_admin):
            raise _PageError(403, "Log in with the admin key to change versions.")
        if not access.form_token_ok(seen.session, form.get("csrf")):
            raise _PageError(403, "The form token is missing or stale: reload the page and try again.")
        return form

    def _back(request: Request, form: dict[str, str], model: str) -> RedirectResponse:
        target = _safe_next(form.get("next"), root(request))
        return RedirectResponse(target or f"{root(request)}/model?{urlencode({'model': model})}", status_code=303)

    @app.post("/activate")
    async def activate(request: Request) -> Response:
        form = await _admin_form(request)
        model, version = _required(form, "model"), _required(form, "version")
        with store(writer=True) as s:
            s.activate(model, version)
        return _back(request, form, model)

    @app.post("/rollback")
    async def rollback(request: Request) -> Response:
        form = await _admin_form(request)
        model = _required(form, "model")
        with store(writer=True) as s:
            s.rollback(model)
        return _back(request, form, model)

    @app.post("/promote")
    async def promote(request: Request) -> Response:
        form = await _admin_form(request)
        model, version = _required(form, "model"), _required(form, "version")
        with store() as s:
            version = s.get(model, version).version  # an unknown version is a 404 now, not a failed job later
        try:
            job = jobs.start_promote(model, version, actor)
        except JobBusy as exc:
            raise _PageError(409, f"{exc}: wait for it to finish.") from exc
        return RedirectResponse(f"{root(request)}/job?{urlencode({'id': job.id})}", status_code=303)

    @app.get("/job", response_class=HTMLResponse)
    def job_page(request: Request, id: str) -> HTMLResponse:
        seen = viewer(request)
        if not seen.is_admin:
            raise _PageError(403, "Log in with the admin key to see promotion jobs.")
        job = jobs.get(id)
        if job is None:
            raise _PageError(404, f"no job {id!r} (jobs are kept in memory by the server that ran them)")
        return render(request, "job.html", viewer=seen, job=job)

    return app


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (small: a key, a version id and a token), first value per field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise _PageError(413, "form too large")
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise _PageError(415, "expected a form")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise _PageError(400, f"the form has no {name}")
    return value


def _provenance_rows(artifact: Artifact) -> list[tuple[str, float]]:
    return sorted(artifact.provenance.scores.items())
