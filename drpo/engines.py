"""Which managed backend ``drpo backend`` and ``drpo serve`` start: ``--engine`` and ``--model``.

``llamacpp`` (the default) is the embedded llama.cpp server with the packaged
SmolLM2-135M-Instruct; ``vllm`` is ``vllm serve --model`` on a GPU machine. Both are a
:class:`drpo.child_server.ChildServer`, so they start, log, become ready and stop the
same way; their logs go to ``DRPO_HOME/logs/<engine>-backend.log``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

from drpo.child_server import ChildServer, ServerLaunchError
from drpo.embedded import EmbeddedBackend
from drpo.vllm_backend import VLLMBackend, VLLMBackendError
from prompts.artifact import Layout
from prompts.config import EMBEDDED_MODEL_ID


class Engine(enum.StrEnum):
    LLAMACPP = "llamacpp"
    VLLM = "vllm"


class LayoutOption(enum.StrEnum):
    """``--layout``: how the managed model is prompted (``completion``: a base model)."""

    CHAT = "chat"
    COMPLETION = "completion"

    @property
    def layout(self) -> Layout:
        return "completion" if self is LayoutOption.COMPLETION else "chat"


LOG_NAMES = {Engine.LLAMACPP: "embedded-backend.log", Engine.VLLM: "vllm-backend.log"}


def check_engine_options(engine: Engine, model: str | None, extra_args: Sequence[str]) -> None:
    """Options that only make sense for vLLM; raises :class:`ServerLaunchError` with the fix."""
    if engine is Engine.VLLM:
        if not model:
            raise VLLMBackendError("--engine vllm needs --model (a Hugging Face id or a local path)")
        return
    if model and model != EMBEDDED_MODEL_ID:
        raise ServerLaunchError(
            f"--model is for --engine vllm; the embedded llama.cpp backend serves {EMBEDDED_MODEL_ID} only"
        )
    if extra_args:
        raise ServerLaunchError(f"arguments after -- are for --engine vllm, got: {' '.join(extra_args)}")


def served_model_id(engine: Engine, model: str | None) -> str:
    """The model id clients use for the managed backend."""
    return model if engine is Engine.VLLM and model else EMBEDDED_MODEL_ID


def log_path(home: Path, engine: Engine) -> Path:
    return home / "logs" / LOG_NAMES[engine]


def managed_backend(
    engine: Engine,
    model: str | None,
    extra_args: Sequence[str] = (),
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    log: Path | None = None,
) -> ChildServer:
    """The (not yet started) child server for ``engine``."""
    check_engine_options(engine, model, extra_args)
    if engine is Engine.VLLM:
        assert model  # checked above
        return VLLMBackend(model, extra_args, port=port, host=host, log_path=log)
    return EmbeddedBackend(port=port, host=host, log_path=log)
