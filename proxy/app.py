"""The app factory: thin routes over :class:`proxy.serving.OpenAIServing`.

Nothing is created at import time. :func:`create_app` validates the configuration and
builds the routes; the lifespan opens the store (unless one was given), loads the artifact
snapshot, creates the one shared upstream pool and discovery client, starts the snapshot
poller, and closes all of it on shutdown.

The hot routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``) are raw
ASGI endpoints inside a Starlette app; the rest are ordinary Starlette handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from prompts.config import FileConfig, Settings
from prompts.registry import RegistryFollower
from prompts.remote_embeddings import BackendEmbeddings
from prompts.store import PromptStore, open_store
from proxy.admin import create_admin_app
from proxy.asgi import Receive, Scope, Send
from proxy.auth import KeyChecker
from proxy.auth_throttle import AuthThrottle
from proxy.errors import MethodNotAllowed, ProxyError, RouteNotFound, error_body
from proxy.injection import Policies
from proxy.jobs import JobRunner
from proxy.metrics import CONTENT_TYPE_LATEST, Metrics
from proxy.readiness import CachedReadiness
from proxy.routing import Router, build_backends
from proxy.serving import OpenAIServing
from proxy.snapshot import ArtifactSnapshot
from proxy.ui import create_ui_app
from proxy.ui_session import UiAccess
from proxy.upstream import Upstream

logger = logging.getLogger(__name__)

Handler = Callable[[OpenAIServing, Scope, Receive, Send], Awaitable[None]]


class _Holder:
    """Filled by the lifespan; routes exist before the serving objects do."""

    serving: OpenAIServing | None = None
    store: PromptStore | None = None
    readiness: CachedReadiness | None = None
    follower: RegistryFollower | None = None


class _RawEndpoint:
    """A raw ASGI endpoint (a class instance, so Starlette does not wrap it in Request/Response)."""

    def __init__(self, holder: _Holder, handler: Handler) -> None:
        self._holder = holder
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        serving = self._holder.serving
        if serving is None:
            raise RuntimeError("the proxy app is used outside its lifespan")
        await self._handler(serving, scope, receive, send)


class ProxyApp(Starlette):
    """Starlette, with the hot POST routes dispatched before the middleware stack.

    Those handlers map every error themselves, so routing them through Starlette's
    exception middleware and router (a regex match per route) would only add latency.
    """

    def __init__(self, hot: dict[str, _RawEndpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._hot.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _error_response(exc: ProxyError) -> Response:
    headers = dict(exc.headers)
    if exc.status_code in (429, 503):
        headers.setdefault("retry-after", "1")
    return Response(error_body(exc), status_code=exc.status_code, media_type="application/json", headers=headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error_response(MethodNotAllowed(f"method {request.method} not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return _error_response(RouteNotFound(f"no route for {request.method} {request.url.path}"))
    error = ProxyError(str(exc.detail))
    return Response(error_body(error), status_code=exc.status_code, media_type="application/json")


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _error_response(ProxyError("internal error in the proxy"))


def create_app(
    settings: Settings,
    file_config: FileConfig | None = None,
    store: PromptStore | None = None,
) -> ProxyApp:
    """Build the proxy app. Raises ``ValueError`` for an inconsistent configuration."""
    file_config = file_config or FileConfig()
    backends, default = build_backends(settings, file_config)
    metrics = Metrics()
    keys = KeyChecker(
        [k.get_secret_value() for k in settings.api_keys],
        settings.bypass,
        [k.get_secret_value() for k in settings.bypass_keys],
    )
    # /metrics is open unless DRPO_METRICS_KEY is set (a scraper's key, separate from clients').
    metrics_key = KeyChecker([settings.metrics_key.get_secret_value()] if settings.metrics_key else [])
    holder = _Holder()

    def serving() -> OpenAIServing:
        if holder.serving is None:
            raise RuntimeError("the proxy app is used outside its lifespan")
        return holder.serving

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_store = store is None
        if store is not None:
            the_store = store
        else:  # catches up with the registry first (if one is configured and up)
            the_store = await asyncio.to_thread(open_store, settings, file_config=file_config)
        snapshot = ArtifactSnapshot(the_store, settings.store_poll_interval)
        await asyncio.to_thread(snapshot.load_now)
        if the_store.registry is not None:
            loop = asyncio.get_running_loop()
            holder.follower = RegistryFollower(
                the_store.registry,
                the_store.follower_cache(),
                lambda replaced: loop.call_soon_threadsafe(snapshot.wake, replaced),
            )
            holder.follower.start()
            follower = holder.follower
            metrics.watch_registry(lambda: follower.connected)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        upstream = Upstream(
            settings.connect_timeout,
            settings.read_timeout,
            max_connections_per_origin=settings.backend_max_connections,
            keepalive_expiry=settings.backend_keepalive,
        )
        router = Router(backends, default, file_config, settings.models_cache_ttl, client)
        embeddings_url = settings.embeddings_url or settings.backend_url
        embeddings = None
        if embeddings_url:
            key = settings.embeddings_api_key or settings.backend_api_key
            embeddings = BackendEmbeddings(
                embeddings_url,
                client,
                key.get_secret_value() if key else None,
                cache_dir=settings.home / "embeddings",
                timeout=settings.connect_timeout + 5.0,
            )
        holder.serving = OpenAIServing(
            router, upstream, snapshot, Policies(file_config), metrics, keys, settings.max_body_bytes, embeddings
        )
        holder.store = the_store
        holder.readiness = CachedReadiness(router.check, settings.ready_cache_ttl)
        await router.refresh()  # warm the model lists; failures are recorded, not raised
        poller = asyncio.create_task(snapshot.run())
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if holder.follower is not None:
                await asyncio.to_thread(holder.follower.stop)
                holder.follower = None
            holder.serving = None
            holder.readiness = None
            await router.aclose()
            await upstream.aclose()
            await client.aclose()
            if own_store:
                the_store.close()

    def check_key(request: Request) -> None:
        keys.check(request.headers.get("authorization", "").encode() or None)

    async def list_models(request: Request) -> Response:
        check_key(request)
        data = await serving().router.models()
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if holder.readiness is None:
            raise RuntimeError("the proxy app is used outside its lifespan")
        errors = await holder.readiness.get()
        ok = bool(errors) and all(e is None for e in errors.values())
        body: dict[str, Any] = {
            "status": "ready" if ok else "unavailable",
            "backends": {k: v or "ok" for k, v in errors.items()},
        }
        if holder.follower is not None:  # informative only: a replica serves its copy while Redis is down
            body["registry"] = holder.follower.status()
        return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"retry-after": "1"})

    async def render_metrics(request: Request) -> Response:
        metrics_key.check(request.headers.get("authorization", "").encode() or None)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    hot = {
        "/v1/chat/completions": _RawEndpoint(holder, OpenAIServing.chat),
        "/v1/completions": _RawEndpoint(holder, OpenAIServing.completions),
        "/v1/embeddings": _RawEndpoint(holder, OpenAIServing.embeddings),
    }
    # Also registered as ordinary routes, so other methods get a proper 405.
    routes: list[BaseRoute] = [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in hot.items()),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", render_metrics, methods=["GET"]),
    ]
    # Promotions through the gate and refreshes run as CLI child processes (the proxy never imports them).
    jobs = JobRunner(settings.home, settings.config, env=_backend_env(settings))

    def store_dir() -> Path:
        return holder.store.directory if holder.store is not None else settings.store_dir

    # One count of wrong keys per client address for the admin API and the dashboard: the same keys open both.
    guesses = AuthThrottle(settings.auth_failure_limit, settings.auth_failure_window)
    if settings.admin_key is not None:
        admin = create_admin_app(
            store_dir,
            settings.admin_key.get_secret_value(),
            settings.admin_key_name,
            jobs,
            registry=lambda: holder.store.registry if holder.store is not None else None,
            throttle=guesses,
        )
        routes.append(Mount("/admin", app=admin))
    if settings.ui:  # the dashboard: read-only unless logged in with the admin key (DRPO_UI=off removes it)
        access = UiAccess(
            settings.admin_key.get_secret_value() if settings.admin_key else None,
            [k.get_secret_value() for k in settings.api_keys],
        )

        def ui_store(actor: str | None) -> PromptStore:
            # With a shared registry a change goes through Redis like every other writer's, not only to this copy.
            registry = holder.store.registry if holder.store is not None else None
            return PromptStore(store_dir(), actor, registry)

        ui = create_ui_app(
            ui_store,
            settings.runs_dir,
            access,
            f"admin:{settings.admin_key_name}",
            jobs,
            throttle=guesses,
        )
        routes.append(Mount("/ui", app=ui))
    app = ProxyApp(
        hot,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ProxyError: _proxy_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.metrics = metrics
    app.state.holder = holder
    app.state.jobs = jobs
    return app


def _backend_env(settings: Settings) -> dict[str, str]:
    """The single backend given to the proxy, passed on to the jobs it starts (the config file goes too)."""
    env = {"DRPO_BACKEND_URL": settings.backend_url} if settings.backend_url else {}
    if settings.backend_url and settings.backend_api_key is not None:
        env["DRPO_BACKEND_API_KEY"] = settings.backend_api_key.get_secret_value()
    return env
