"""Helpers to run the real proxy app in-process, in front of a fake or real backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prompts.artifact import Artifact, Example, RetrievalSettings
from prompts.config import FileConfig, Settings
from prompts.store import PromptStore
from proxy.app import create_app
from tests.fakes.server_thread import ServerThread

SYSTEM_PROMPT = "TEST-SYSTEM-PROMPT: be helpful and harmless."
EXAMPLES = (
    Example(query="How do I bake sourdough bread?", answer="EXAMPLE-BREAD: feed the starter, then bake hot."),
    Example(query="How do I kill a stuck Linux process?", answer="EXAMPLE-KILL: use kill PID, then kill -9."),
    Example(query="Write a poem about the sea.", answer="EXAMPLE-POEM: waves fold in silver lines."),
)


def make_settings(home: Path, backend_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "backend_url": backend_url,
        "api_keys": [],
        "backend_api_key": None,
        "read_timeout": 10.0,
        "connect_timeout": 2.0,
        "store_poll_interval": 0.05,
        "models_cache_ttl": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def make_artifact(model: str, system_prompt: str = SYSTEM_PROMPT, k: int = 1, **changes: Any) -> Artifact:
    return Artifact(
        model=model,
        system_prompt=system_prompt,
        examples=EXAMPLES,
        retrieval=RetrievalSettings(k=k),
        **changes,
    )


@contextlib.contextmanager
def running_proxy(
    settings: Settings, file_config: FileConfig | None = None, store: PromptStore | None = None
) -> Iterator[str]:
    """The proxy on a free loopback port; yields its base URL (without ``/v1``)."""
    with ServerThread(create_app(settings, file_config, store)) as server:
        yield server.url
