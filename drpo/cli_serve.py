"""`drpo serve`: the proxy, in front of configured backends or the embedded one.

Start-up order: settings and config file (errors: exit 2), the bind check (a
non-loopback address needs client keys or ``--insecure``: exit 2), then the managed
backend as a child process: with ``--engine vllm --model ID``, ``vllm serve ID``; else,
when no backend is configured anywhere, the embedded llama.cpp backend. ``--layout``
sets how the managed model is prompted (``completion`` for a base model).
``--with-worker`` adds the refresh worker as a second child (same home, config and backend).
The children are stopped on every way out (normal exit, Ctrl-C, SIGTERM, a crash in the
proxy) because it lives in a ``with`` block and SIGTERM is turned into an exception.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import typer
from pydantic import SecretStr, ValidationError

from drpo.child_server import ServerLaunchError, same_home_env, spawn_tied_to_parent
from drpo.engines import Engine, LayoutOption, check_engine_options, log_path, managed_backend, served_model_id
from prompts.artifact import Layout
from prompts.config import (
    BackendConfig,
    ConfigError,
    FileConfig,
    Settings,
    get_settings,
    load_config_file,
)
from prompts.errors import PromptsError
from prompts.store import PromptStore, open_store

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
WORKER_STOP_TIMEOUT = 30.0  # seconds the worker gets to checkpoint before it is killed
CLI_BACKEND_PREFIX = "cli-"


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the root app."""
    app.command("serve")(serve)


class ServeConfigError(Exception):
    """A start-up problem the user must fix (reported in one line, exit code 2)."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        # A host name other than localhost may resolve anywhere: treat it as public.
        return False


def check_bind(host: str, has_client_keys: bool, insecure: bool) -> None:
    """Refuse to expose an unauthenticated proxy beyond this machine."""
    if is_loopback(host) or has_client_keys or insecure:
        return
    raise ServeConfigError(
        f"refusing to listen on non-loopback address {host!r} without client keys: "
        "set DRPO_API_KEYS (comma-separated) or pass --insecure"
    )


def _normalise_url(url: str) -> str:
    try:
        return BackendConfig(url=url).url
    except ValidationError as exc:
        raise ServeConfigError(f"invalid --backend {url!r}: must start with http:// or https://") from exc


def resolve_settings(
    base: Settings,
    *,
    host: str | None,
    port: int | None,
    backends: list[str],
    backend_api_key: str | None,
    config: Path | None,
    log_level: str | None,
) -> tuple[Settings, FileConfig]:
    """Settings with command-line overrides applied, and the parsed config file.

    One ``--backend`` becomes ``settings.backend_url`` (every model goes there). Several
    become named backends ``cli-1``, ``cli-2``, ... in the file config, routed by the
    models each one lists in its ``/v1/models``.
    """
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if config is not None:
        updates["config"] = config
    if log_level is not None:
        updates["log_level"] = log_level.upper()
    if backend_api_key is not None:
        updates["backend_api_key"] = SecretStr(backend_api_key)
    urls = [_normalise_url(url) for url in backends]
    if len(urls) == 1:
        updates["backend_url"] = urls[0]
    elif base.backend_url:
        updates["backend_url"] = _normalise_url(base.backend_url)
    settings = base.model_copy(update=updates)
    try:
        file_config = load_config_file(settings.config)
    except ConfigError as exc:
        raise ServeConfigError(str(exc)) from exc
    if len(urls) > 1:
        extra = {
            f"{CLI_BACKEND_PREFIX}{n}": BackendConfig(
                url=url, api_key=settings.backend_api_key, kind=settings.backend_kind
            )
            for n, url in enumerate(urls, 1)
        }
        file_config = file_config.model_copy(update={"backends": {**file_config.backends, **extra}})
    if file_config.default_backend and file_config.default_backend not in file_config.backends:
        raise ServeConfigError(f"config: default_backend {file_config.default_backend!r} is not a configured backend")
    for model, options in file_config.models.items():
        if options.backend and options.backend not in file_config.backends:
            raise ServeConfigError(f"config: model {model!r} uses unknown backend {options.backend!r}")
    return settings, file_config


def needs_embedded_backend(settings: Settings, file_config: FileConfig) -> bool:
    return not settings.backend_url and not file_config.backends


def check_managed(
    settings: Settings, file_config: FileConfig, engine: Engine, model: str | None, extra_args: list[str]
) -> bool:
    """Whether a managed backend will start; :class:`ServeConfigError` for options that contradict."""
    try:
        check_engine_options(engine, model, extra_args)
    except ServerLaunchError as exc:
        raise ServeConfigError(str(exc)) from exc
    if engine is Engine.VLLM:
        if settings.backend_url:
            raise ServeConfigError(
                "--engine vllm starts its own backend: drop --backend (or DRPO_BACKEND_URL), "
                "or list other backends in the config file"
            )
        return True
    return needs_embedded_backend(settings, file_config)


def with_layout(file_config: FileConfig, model_id: str, layout: Layout | None) -> FileConfig:
    """``file_config`` with the managed model's mode set by ``--layout`` (other options kept)."""
    if layout is None:
        return file_config
    options = file_config.options_for(model_id).model_copy(update={"mode": layout})
    return file_config.model_copy(update={"models": {**file_config.models, model_id: options}})


class _Terminated(Exception):
    """SIGTERM, raised as an exception so ``with`` blocks clean up."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _managed_if_needed(
    settings: Settings, engine: Engine, model: str | None, extra_args: list[str], start: bool
) -> Iterator[Settings]:
    if not start:
        yield settings
        return
    log = log_path(settings.home, engine)
    server = managed_backend(engine, model, extra_args, log=log)
    model_id = served_model_id(engine, model)
    reason = "" if engine is Engine.VLLM else "no backend configured: "
    typer.echo(f"{reason}starting the {server.name} ({model_id}) ...")
    with server:
        typer.echo(f"{server.name} ready at {server.base_url} (log: {log})")
        # vLLM's dialect is known, not guessed; the embedded server is recognised from its /v1/models.
        kind = "vllm" if engine is Engine.VLLM else settings.backend_kind
        yield settings.model_copy(update={"backend_url": server.base_url, "backend_kind": kind})


def apply_config_splits(store: PromptStore, file_config: FileConfig) -> None:
    """Set the A/B splits the config file declares (audited as ``config``); exit 2 on an unknown version."""
    for model, options in file_config.models.items():
        if options.split is None:
            continue
        try:
            with PromptStore(store.directory, actor="config", registry=store.registry) as writer:
                resolved = {writer.get(model, v).version: w for v, w in options.split.items()}
                if writer.split(model) != resolved:
                    writer.set_split(model, resolved)
        except PromptsError as exc:
            typer.echo(f"error: config: models.{model}.split: {exc}", err=True)
            raise typer.Exit(EXIT_CONFIG) from exc


@contextlib.contextmanager
def _worker_if_asked(wanted: bool, live: Settings, metrics_port: int) -> Iterator[None]:
    """`drpo worker` beside the proxy: same home and config, and the proxy's managed backend when it
    started one (so the worker does not start a second model). Asked to stop at its next checkpoint
    when the proxy stops; killed with the proxy if the proxy dies."""
    if not wanted:
        yield
        return
    env = same_home_env(live.home, live.config)
    if live.backend_url:
        env["DRPO_BACKEND_URL"] = live.backend_url
    command = [sys.executable, "-m", "drpo", "worker", "--metrics-port", str(metrics_port)]
    worker = spawn_tied_to_parent(command, env=env, inherit_output=True)
    typer.echo(f"refresh worker started (pid {worker.pid}; metrics on :{metrics_port or 'off'})")
    try:
        yield
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # the worker finishes at its next checkpoint
            try:
                worker.wait(timeout=WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _describe_backends(settings: Settings, file_config: FileConfig) -> str:
    names = [f"{name}={backend.url}" for name, backend in file_config.backends.items()]
    if settings.backend_url:
        names.insert(0, settings.backend_url)
    return ", ".join(names)


def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default: DRPO_HOST, else 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on (default: DRPO_PORT, else 8000)."),
    backend: list[str] = typer.Option(
        [], "--backend", help="OpenAI-compatible backend URL; repeat for several (routed by model)."
    ),
    backend_api_key: str | None = typer.Option(
        None, "--backend-api-key", help="Key sent to the --backend server(s) (default: DRPO_BACKEND_API_KEY)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML/TOML config file: backends, per-model options (default: DRPO_CONFIG)."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow a non-loopback address without client keys (DRPO_API_KEYS)."
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="debug, info, warning, error."),
    engine: Engine = typer.Option(
        Engine.LLAMACPP,
        "--engine",
        help="Managed backend: llamacpp (embedded, when no backend is configured) or vllm (`vllm serve --model`).",
    ),
    model: str | None = typer.Option(
        None, "--model", help="With --engine vllm: the Hugging Face id or path to serve (also its model id)."
    ),
    layout: LayoutOption | None = typer.Option(
        None, "--layout", help="How the managed model is prompted: chat, or completion for a base model."
    ),
    extra_args: list[str] = typer.Argument(
        None, metavar="[-- VLLM_ARGS...]", help="With --engine vllm: arguments passed to `vllm serve` unchanged."
    ),
    with_worker: bool = typer.Option(
        False,
        "--with-worker",
        help="Also run the refresh worker (`drpo worker`, same config) in its own process, stopped with the proxy.",
    ),
    worker_metrics_port: int = typer.Option(
        9101, "--worker-metrics-port", min=0, max=65535, help="With --with-worker: its metrics port (0: off)."
    ),
) -> None:
    """Serve DRPO-aligned models behind an OpenAI-compatible API.

    With no backend configured, starts the embedded llama.cpp backend (SmolLM2-135M-Instruct) and stops it on exit;
    with --engine vllm --model ID, starts `vllm serve ID` instead.
    """
    extra_args = extra_args or []
    try:
        settings, file_config = resolve_settings(
            get_settings(),
            host=host,
            port=port,
            backends=backend,
            backend_api_key=backend_api_key,
            config=config,
            log_level=log_level,
        )
        check_bind(settings.host, bool(settings.api_keys), insecure)
        start_managed = check_managed(settings, file_config, engine, model, extra_args)
        if layout is not None:
            if not start_managed:
                raise ServeConfigError(
                    "--layout applies to the managed backend's model; set models.<id>.mode in the config file instead"
                )
            file_config = with_layout(file_config, served_model_id(engine, model), layout.layout)
    except ValidationError as exc:
        typer.echo(f"error: invalid DRPO_* environment: {exc.errors()[0].get('msg', exc)}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    except ServeConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        # httpx logs every model-list poll at INFO; that is noise unless debugging.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    # Import the proxy only here: `drpo prompts ...` should not pay for FastAPI.
    from proxy.app import create_app
    from proxy.protocol import ServerLimits
    from proxy.server import run

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with (
            _managed_if_needed(settings, engine, model, extra_args, start_managed) as live,
            open_store(live, directory=live.store_dir, file_config=file_config) as store,
            _worker_if_asked(with_worker, live, worker_metrics_port),
        ):
            apply_config_splits(store, file_config)
            try:
                app = create_app(live, file_config, store)
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(EXIT_CONFIG) from exc
            scheme_host = f"[{live.host}]" if ":" in live.host else live.host
            typer.echo(f"drpo proxy listening on http://{scheme_host}:{live.port}/v1")
            typer.echo(f"backend: {_describe_backends(live, file_config)}")
            if insecure and not live.api_keys:
                typer.echo(
                    "warning: --insecure: no client keys, anyone who can reach this address may use it", err=True
                )
            run(app, live.host, live.port, live.log_level.lower(), ServerLimits.from_settings(live))
    except ServerLaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (_Terminated, KeyboardInterrupt):
        logger.info("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
