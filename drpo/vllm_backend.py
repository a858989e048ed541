"""vLLM as a managed backend: ``vllm serve MODEL`` run as a child process.

Started and stopped by the same launcher as the embedded llama.cpp server
(:class:`drpo.child_server.ChildServer`): a free loopback port, output kept in a log
file, ready when vLLM's ``/health`` answers 200 (vLLM only opens its port once the
weights are loaded), stopped with its whole process group, and on Linux killed with us,
engine processes included (``whole_group``).

The model is served under the id the user asked for (``--served-model-name``), so a
client, the proxy's routing and the prompt store all use the same name. Arguments after
``--`` on our command line reach ``vllm serve`` unchanged (``--max-model-len``,
``--gpu-memory-utilization``, ``--dtype``...); the host, port and served name are ours.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from drpo.child_server import ChildServer, ServerLaunchError

VLLM_EXECUTABLE = "vllm"
INSTALL_HINT = "install the 'vllm' extra on a machine with a supported GPU: pip install 'drpo-proxy[vllm]'"
# Loading weights (and, on the first start, compiling kernels) takes minutes on a GPU.
VLLM_READY_TIMEOUT = 900.0
# Options drpo sets itself; passing them after `--` as well would make two different answers.
_OURS = ("--host", "--port", "--served-model-name")


class VLLMBackendError(ServerLaunchError):
    """vLLM is not installed, was given conflicting options, or did not become ready."""


def find_vllm() -> str:
    """The ``vllm`` executable on PATH (the one the ``vllm`` extra installs)."""
    found = shutil.which(VLLM_EXECUTABLE)
    if found is None:
        raise VLLMBackendError(f"the vllm executable was not found on PATH: {INSTALL_HINT}")
    return found


def check_extra_args(extra: Sequence[str]) -> list[str]:
    """The arguments for ``vllm serve`` after ``--``, refusing the ones drpo sets itself."""
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in _OURS:
            raise VLLMBackendError(
                f"{name} is set by drpo (use drpo's --host/--port; the served name is --model); "
                "remove it from the arguments after --"
            )
    return list(extra)


class VLLMBackend(ChildServer):
    """``vllm serve MODEL`` as a child process, serving MODEL under the name ``model``."""

    name = "vLLM backend"
    ready_path = "/health"
    error = VLLMBackendError
    # vLLM's EngineCore and worker processes outlive a SIGKILLed API server (and keep the GPU).
    whole_group = True

    def __init__(
        self,
        model: str,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = VLLM_READY_TIMEOUT,
        log_path: Path | None = None,
    ) -> None:
        if not model.strip():
            raise VLLMBackendError("--model is required with --engine vllm (a Hugging Face id or a local path)")
        super().__init__(port=port, host=host, ready_timeout=ready_timeout, log_path=log_path)
        self.model = model
        self.extra_args = check_extra_args(extra_args)

    def command(self) -> list[str]:
        return [
            find_vllm(),
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.model,
            *self.extra_args,
        ]
