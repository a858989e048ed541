"""Which backend serves a model.

Order of resolution for a model id:

1. ``models[m].backend`` in the config file routes it explicitly;
2. otherwise the default backend (``default_backend`` in the file, else ``DRPO_BACKEND_URL``)
   if its model list names it, then every other backend in config order;
3. otherwise 404 ``model_not_found`` (llama.cpp answers any name, so discovery is our only
   source of truth), or 502 when a backend that might serve it could not be asked.

A backend's model list is its static ``models`` from the config, else its ``/v1/models``,
fetched with httpx and cached for ``models_cache_ttl``. A stale list is served while a
background refresh runs; an unknown name forces a refresh at most once per second.

The same fetch tells a backend's kind when it is configured as ``auto``
(:func:`proxy.llamacpp.detect_kind`); ``Backend.llama_cpp`` and ``Backend.vllm`` are what
the hot path reads.
llama-cpp-python's server serialises *every* request, ``/v1/models`` included, on one
lock, and by default a waiting request cuts the running stream short (it just sends
``[DONE]``). So a llama.cpp backend is never asked for its models while the proxy has a
request in flight to it: routing keeps the cached list, ``/ready`` the last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from prompts.config import BackendConfig, FileConfig, Settings
from proxy.errors import BackendUnavailable, ModelNotFound
from proxy.llamacpp import detect_kind
from proxy.upstream import Endpoint

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "default"
_MIN_FORCED_REFRESH = 1.0


@dataclass
class Backend:
    name: str
    url: str
    endpoint: Endpoint
    api_key: str | None
    forward_client_auth: bool
    static_models: tuple[str, ...]
    kind: str = "auto"  # as configured
    # Discovery state.
    entries: list[dict[str, Any]] = field(default_factory=list)
    model_ids: frozenset[str] = frozenset()
    fetched_at: float = -1e18
    last_error: str | None = None
    refreshing: asyncio.Task[None] | None = None
    llama_cpp: bool = False  # needs the llama.cpp fixes (configured, or detected from /v1/models)
    vllm: bool = False  # speaks vLLM's dialect (configured, or detected from /v1/models)
    in_flight: int = 0  # requests the proxy is forwarding to it right now

    @property
    def busy_llama_cpp(self) -> bool:
        """Asking it anything now would interrupt a running generation."""
        return self.llama_cpp and self.in_flight > 0

    def __post_init__(self) -> None:
        self.llama_cpp = self.kind == "llamacpp"
        self.vllm = self.kind == "vllm"

    @property
    def auth_header(self) -> bytes | None:
        return f"Bearer {self.api_key}".encode() if self.api_key else None


def build_backends(settings: Settings, file_config: FileConfig) -> tuple[dict[str, Backend], str | None]:
    """All configured backends by name, and the name of the default one."""
    configs: dict[str, BackendConfig] = {}
    if settings.backend_url:
        key = settings.backend_api_key
        configs[DEFAULT_BACKEND] = BackendConfig(url=settings.backend_url, api_key=key, kind=settings.backend_kind)
    configs.update(file_config.backends)
    backends = {
        name: Backend(
            name=name,
            url=cfg.url,
            endpoint=Endpoint.parse(cfg.url),
            api_key=cfg.resolved_api_key()
            or (settings.backend_api_key.get_secret_value() if settings.backend_api_key else None),
            forward_client_auth=cfg.forward_client_auth,
            static_models=tuple(cfg.models),
            kind=cfg.kind,
        )
        for name, cfg in configs.items()
    }
    default = file_config.default_backend or (DEFAULT_BACKEND if DEFAULT_BACKEND in backends else None)
    if default is not None and default not in backends:
        raise ValueError(f"default_backend {default!r} is not a configured backend")
    for model, options in file_config.models.items():
        if options.backend is not None and options.backend not in backends:
            raise ValueError(f"model {model!r} names backend {options.backend!r}, which is not configured")
    return backends, default


class Router:
    def __init__(
        self,
        backends: dict[str, Backend],
        default: str | None,
        file_config: FileConfig,
        ttl: float,
        client: httpx.AsyncClient,
    ) -> None:
        self.backends = backends
        self._client = client
        self._ttl = ttl
        self._explicit = {m: backends[o.backend] for m, o in file_config.models.items() if o.backend is not None}
        ordered = [backends[default]] if default else []
        self._order = ordered + [b for b in backends.values() if b not in ordered]
        self._lock = asyncio.Lock()
        for backend in backends.values():
            if backend.static_models:
                backend.model_ids = frozenset(backend.static_models)
                backend.entries = [_entry(m, backend.name) for m in backend.static_models]

    async def resolve(self, model: str) -> Backend:
        explicit = self._explicit.get(model)
        if explicit is not None:
            return explicit
        now = time.monotonic()
        for backend in self._order:
            if backend.static_models:
                if model in backend.model_ids:
                    return backend
                continue
            if now - backend.fetched_at > self._ttl and backend.fetched_at > 0:
                self._refresh_in_background(backend)
            if model in backend.model_ids:
                return backend
        # Unknown (or nothing fetched yet): ask the backends again, then decide.
        await self.refresh(force=False)
        unreachable = []
        for backend in self._order:
            if model in backend.model_ids:
                return backend
            if backend.last_error is not None:
                unreachable.append(backend.name)
        if unreachable:
            raise BackendUnavailable(
                f"cannot tell which backend serves {model!r}: backend(s) {', '.join(unreachable)} unreachable"
            )
        raise ModelNotFound(f"The model '{model}' does not exist or is not served here", param="model")

    def _refresh_in_background(self, backend: Backend) -> None:
        if backend.busy_llama_cpp:
            return
        if backend.refreshing is None or backend.refreshing.done():
            backend.refreshing = asyncio.create_task(self._fetch_unless_busy(backend))

    async def _fetch_unless_busy(self, backend: Backend) -> None:
        # The task starts only once resolve()'s caller yields, by which time that very
        # request is usually counted in flight: ask again, or the fetch would reach a
        # llama.cpp server at the start of its stream.
        if not backend.busy_llama_cpp:
            await self._fetch(backend)

    async def refresh(self, force: bool = True) -> None:
        """Fetch every discovering backend's model list (skipping very recent ones unless forced)."""
        async with self._lock:
            now = time.monotonic()
            due = [
                b
                for b in self._order
                if not b.static_models and not b.busy_llama_cpp and (force or now - b.fetched_at > _MIN_FORCED_REFRESH)
            ]
            if due:
                await asyncio.gather(*(self._fetch(b) for b in due))

    async def _fetch(self, backend: Backend, timeout: float | None = None) -> None:
        headers = {"authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
        try:
            response = await self._client.get(f"{backend.url}/models", headers=headers, timeout=timeout)
            response.raise_for_status()
            data = response.json().get("data", [])
            entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            backend.last_error = type(exc).__name__
            backend.fetched_at = time.monotonic()
            logger.warning("model discovery failed for backend %s: %s", backend.name, backend.last_error)
            return
        backend.entries = entries
        backend.model_ids = frozenset(e["id"] for e in entries)
        if backend.kind == "auto":
            detected = detect_kind(entries)
            llama_cpp = detected == "llamacpp"
            if llama_cpp != backend.llama_cpp:
                logger.info("backend %s: llama.cpp compatibility %s", backend.name, "on" if llama_cpp else "off")
            backend.llama_cpp = llama_cpp
            backend.vllm = detected == "vllm"
        backend.fetched_at = time.monotonic()
        backend.last_error = None

    async def check(self, timeout: float = 2.0) -> dict[str, str | None]:
        """Readiness: ask every backend for its models now; name -> error (None when fine)."""
        await asyncio.gather(*(self._fetch(b, timeout) for b in self._order if not b.busy_llama_cpp))
        return {b.name: b.last_error for b in self._order}

    async def models(self) -> list[dict[str, Any]]:
        """The union of every backend's models (cached lists; refreshed when stale)."""
        now = time.monotonic()
        if any(not b.static_models and now - b.fetched_at > self._ttl for b in self._order):
            await self.refresh(force=False)
        seen: dict[str, dict[str, Any]] = {}
        for backend in self._order:
            for entry in backend.entries:
                seen.setdefault(entry["id"], entry)
        return list(seen.values())

    async def aclose(self) -> None:
        for backend in self._order:
            task = backend.refreshing
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _entry(model: str, owner: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}
