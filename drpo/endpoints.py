"""Where the target model is reached: one rule for `drpo optimize`, `drpo eval` and `drpo prompts promote`.

Precedence: an explicit ``--backend`` flag, then the model's own backend in the config file, then
``DRPO_BACKEND_URL``, then the config file's default backend, and finally the embedded llama.cpp
backend (the :data:`EMBEDDED` placeholder, started on demand by the command that needs it).
"""

from __future__ import annotations

import os

from prompts.config import FileConfig, Settings

EMBEDDED = "embedded"


def key_for(role: str, env: str | None = None) -> str | None:
    """An API key for an optimizer role: the named variable, else ``DRPO_<ROLE>_API_KEY``."""
    return os.environ.get(env or "") or os.environ.get(f"DRPO_{role.upper()}_API_KEY") or None


def target_endpoint(
    model: str, backend: str | None, settings: Settings, file_config: FileConfig
) -> tuple[str, str | None]:
    """(url or EMBEDDED, api key) for the target."""
    key = key_for("target")
    if backend:
        return backend.rstrip("/"), key
    options = file_config.options_for(model)
    name = options.backend or file_config.default_backend
    if options.backend and name in file_config.backends:
        conf = file_config.backends[name]
        return conf.url, key or conf.resolved_api_key()
    if settings.backend_url:
        api = settings.backend_api_key.get_secret_value() if settings.backend_api_key else None
        return settings.backend_url.rstrip("/"), key or api
    if name and name in file_config.backends:
        conf = file_config.backends[name]
        return conf.url, key or conf.resolved_api_key()
    return EMBEDDED, key
