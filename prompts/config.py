"""Settings (environment, prefix ``DRPO_``) and the optional config file.

Every environment variable drpo reads is a field of :class:`Settings`:

====================  ==========================================================
DRPO_HOME             data dir (store, runs, caches); default: the user data dir
DRPO_CONFIG           path of a YAML/TOML config file (same as ``--config``)
DRPO_API_KEYS         comma-separated client keys; when set, requests need one
DRPO_METRICS_KEY      when set, GET /metrics needs ``Authorization: Bearer <it>``
DRPO_READY_CACHE_TTL  seconds one /ready backend check is reused (floods make one check)
DRPO_BYPASS           who may skip alignment with ``x-drpo-bypass: 1``: any | off | keys
DRPO_BYPASS_KEYS      with DRPO_BYPASS=keys: the client keys allowed to (comma-separated)
DRPO_HOST/DRPO_PORT   where ``drpo serve`` listens (127.0.0.1:8000)
DRPO_BACKEND_URL      a single backend for every model (same as ``--backend``)
DRPO_BACKEND_API_KEY  key sent to that backend
DRPO_BACKEND_KIND     that backend's dialect: auto (default) | openai | vllm | llamacpp
DRPO_MAX_BODY_BYTES   request body limit (413 above it)
DRPO_MAX_HEADER_BYTES request line + headers limit (431 above it; 64 KiB)
DRPO_HEADER_TIMEOUT   seconds a client has to send a request's headers (408 after; 10)
DRPO_BODY_TIMEOUT     seconds a request body may stall without a byte (408 after; 30)
DRPO_KEEPALIVE_TIMEOUT  seconds an idle client connection is kept open between requests (5)
DRPO_MAX_CONNECTIONS  client connections; beyond it the longest-idle are closed (2048)
DRPO_CONNECT_TIMEOUT  seconds to connect to a backend
DRPO_READ_TIMEOUT     seconds to wait for backend bytes (504 after)
DRPO_BACKEND_MAX_CONNECTIONS  concurrent requests per backend origin (more wait)
DRPO_BACKEND_KEEPALIVE  seconds an idle backend connection is kept (3; under the 5 s most servers use)
DRPO_MODELS_CACHE_TTL seconds to cache each backend's /v1/models
DRPO_STORE_POLL_INTERVAL  seconds between checks for a new active version
DRPO_REGISTRY_URL     shared registry of prompt versions for many replicas (redis://...)
DRPO_LOG_LEVEL        logging level
DRPO_DEFAULT_RETRIEVAL  the built-in default's retrieval: embedding (WordLlama, default) | minilm
DRPO_UI               the dashboard under /ui: on (default) | off
====================  ==========================================================

The config file maps model ids to backends and per-model options::

    backends:
      local:
        url: http://127.0.0.1:8001/v1
        api_key_env: LOCAL_KEY        # key read from this env var (never stored in the file)
        forward_client_auth: false    # forward the client's Authorization header instead
        kind: auto                    # auto | openai | vllm | llamacpp (see below)
    models:
      my-base-model:
        backend: local
        mode: completion              # chat | completion
        system_policy: merge          # merge | replace | client
        k: 2                          # examples per request (overrides the artifact)
        split: {3f2a9c: 90, 7be01d: 10}   # A/B over stored versions, applied when `drpo serve` starts
    default_backend: local
    registry: redis://redis:6379/0  # optional: replicas share versions through Redis
    refresh:                          # background refresh by `drpo worker`, per model id
      my-base-model:
        schedule: 6h                  # an interval (90s, 30m, 6h, 1d) or a cron expression
        optimize: {depth: 2, beam: 2} # any `drpo optimize` option, dashes as underscores
        gate: {eval_set: val, margin: 0.02}   # labelled JSONL path or set name

A backend's ``kind`` selects compatibility fixes. ``auto`` detects it from the ``owned_by``
of its ``/v1/models`` entries: ``"me"`` (llama-cpp-python's server, our embedded backend)
or ``"llamacpp"`` (llama.cpp's C++ server) mean ``llamacpp``, ``"vllm"`` means ``vllm``,
anything else (or a static ``models`` list, which is never fetched) means ``openai``. For
``llamacpp`` the proxy rewrites ``response_format`` ``json_schema`` into llama.cpp's
``json_object`` + ``schema`` form, and adds the final usage chunk a stream asked for with
``stream_options.include_usage`` when the backend does not send one (prompt tokens are
then estimated and the usage says ``"estimated": true``). For ``vllm`` it turns llama.cpp's
``json_object`` + ``schema`` into ``json_schema`` and keeps ``response_format`` in the
completion layout; vLLM's own usage chunk and extra fields pass through (see
:mod:`prompts.dialects`).
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from prompts.layout import SystemPolicy

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"


BackendKind = Literal["auto", "openai", "vllm", "llamacpp"]
# x-drpo-bypass: anyone may skip alignment ("any"), nobody ("off"), or only DRPO_BYPASS_KEYS ("keys").
BypassPolicy = Literal["any", "off", "keys"]


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid."""


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    forward_client_auth: bool = False
    kind: BackendKind = "auto"
    # Models this backend serves. Empty: discovered from its /v1/models.
    models: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got {value!r}")
        return value if value.endswith("/v1") else value + "/v1"

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    mode: Literal["chat", "completion"] | None = None
    system_policy: SystemPolicy = "merge"
    k: int | None = Field(default=None, ge=0, le=16)
    # An A/B split over stored versions (ids or unique prefixes → weights), applied when `drpo serve`
    # starts; the admin API and `drpo prompts split` change it at run time.
    split: dict[str, int] | None = None

    @field_validator("split")
    @classmethod
    def _positive_weights(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and (not value or any(weight <= 0 for weight in value.values())):
            raise ValueError("a split needs at least one version, each with a positive weight")
        return value


class RoleConfig(BaseModel):
    """An optimizer role (selector, judge, optimizer) endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None


class GateOptions(BaseModel):
    """The promotion gate of a refresh: labelled prompts and how much worse a refusal rate may get."""

    model_config = ConfigDict(extra="forbid")

    # A labelled JSONL path or a set name (builtin-val, val, ...); default: the packaged validation set.
    eval_set: str | None = None
    eval_sets: list[str] = Field(default_factory=list)
    margin: float | None = Field(default=None, ge=0.0, le=1.0)
    objective: Literal["alignment", "judge"] | None = None
    max_tokens: int | None = Field(default=None, ge=1)

    def all_sets(self) -> list[str]:
        return ([self.eval_set] if self.eval_set else []) + self.eval_sets


class RefreshOptions(BaseModel):
    """One model's background refresh (``drpo worker``): when, how to optimize, how to gate."""

    model_config = ConfigDict(extra="forbid")

    schedule: str = "6h"
    # Any `drpo optimize` option, dashes as underscores ({depth: 2, beam: 2, judge_url: ...}).
    optimize: dict[str, Any] = Field(default_factory=dict)
    gate: GateOptions = Field(default_factory=GateOptions)

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        from prompts.schedule import Schedule

        Schedule.parse(value)
        return value


class FileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    models: dict[str, ModelOptions] = Field(default_factory=dict)
    default_backend: str | None = None
    # A shared registry (redis://, rediss:// or unix://); DRPO_REGISTRY_URL takes precedence.
    registry: str | None = None
    roles: dict[Literal["selector", "judge", "optimizer"], RoleConfig] = Field(default_factory=dict)
    refresh: dict[str, RefreshOptions] = Field(default_factory=dict)

    def options_for(self, model: str) -> ModelOptions:
        return self.models.get(model) or ModelOptions()

    @field_validator("registry")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        return _check_registry_url(value)


def _check_registry_url(value: str | None) -> str | None:
    if value is not None and not value.strip():
        return None
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("the registry must be a redis://, rediss:// or unix:// URL")
    return value


def load_config_file(path: Path | None) -> FileConfig:
    """Parse a YAML or TOML config file; ``None`` gives an empty config."""
    if path is None:
        return FileConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "YAML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    try:
        return FileConfig.model_validate(data or {})
    except ValueError as exc:
        raise ConfigError(f"config file {path} is invalid: {exc}") from exc


def _default_home() -> Path:
    return Path(user_data_dir("drpo-proxy", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRPO_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    config: Path | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    metrics_key: SecretStr | None = None
    # /admin exists only when set; changes made through it are audited as admin:<admin_key_name>.
    admin_key: SecretStr | None = None
    # Read by prompts.defaults from the environment; declared here so a wrong value fails at start.
    default_retrieval: Literal["embedding", "minilm"] = "embedding"
    admin_key_name: str = Field(default="admin", min_length=1, max_length=64)
    # Wrong admin or dashboard keys allowed per client address within the window before 429 (0: no limit).
    auth_failure_limit: int = Field(default=10, ge=0)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # The dashboard under /ui: read-only without an admin session (and needs a key to read when api_keys are set).
    ui: bool = True
    ready_cache_ttl: float = Field(default=1.0, ge=0)
    bypass: BypassPolicy = "any"
    bypass_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    backend_url: str | None = None
    backend_api_key: SecretStr | None = None
    # Where artifacts with retrieval.method "backend" get embeddings (default: backend_url).
    embeddings_url: str | None = None
    embeddings_api_key: SecretStr | None = None
    backend_kind: BackendKind = "auto"
    max_body_bytes: int = 8 * 1024 * 1024
    # Client-side connection limits, enforced by proxy/protocol.py (see its docstring).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keepalive_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=2048, ge=1)
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    backend_max_connections: int = Field(default=128, ge=1)
    backend_keepalive: float = Field(default=3.0, gt=0)
    models_cache_ttl: float = 60.0
    store_poll_interval: float = 1.0
    registry_url: str | None = None
    log_level: str = "INFO"

    @field_validator("api_keys", "bypass_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        return _check_registry_url(value)

    @field_validator("metrics_key", "admin_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_bypass(self) -> Settings:
        keys = {k.get_secret_value() for k in self.bypass_keys}
        if self.bypass == "keys" and not keys:
            raise ValueError("DRPO_BYPASS=keys needs DRPO_BYPASS_KEYS (the client keys allowed to bypass)")
        if self.bypass != "keys" and keys:
            raise ValueError(f"DRPO_BYPASS_KEYS is set but DRPO_BYPASS is {self.bypass!r}: set DRPO_BYPASS=keys")
        if keys and self.api_keys and not keys <= {k.get_secret_value() for k in self.api_keys}:
            raise ValueError("every DRPO_BYPASS_KEYS entry must also be one of DRPO_API_KEYS")
        return self

    def file_config(self) -> FileConfig:
        return load_config_file(self.config)

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "llm-cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
