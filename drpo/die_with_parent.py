"""Exec wrapper: ``python -m drpo.die_with_parent [--group] PARENT_PID COMMAND...``.

Runs in the freshly started child, before the real program. It asks Linux to SIGKILL
this process when its parent dies (``PR_SET_PDEATHSIG`` survives ``execv``), then checks
that the parent is still ``PARENT_PID``: if the parent died before the request was made,
no signal would ever come, so the wrapper exits instead of starting an orphan. Then it
replaces itself with COMMAND.

Doing this here, after the child has started, instead of in ``subprocess``'s
``preexec_fn`` keeps the parent's fork free of Python code, which is unsafe in a
threaded parent. Only the standard library is imported: this runs on every start.

``--group`` is for servers made of several processes (vLLM: its API server starts
``EngineCore`` and worker processes, which outlive a SIGKILLed API server and keep the
GPU). The death signal only reaches the process that asked for it, so the wrapper stays
instead of exec'ing: it runs COMMAND as its child in its own process group (the launcher
starts it in a new session), and when our parent dies it SIGKILLs that whole group,
itself included. A SIGTERM to the group (a normal stop) reaches the server, which shuts
down its processes itself; the wrapper ignores it, waits, and exits with the server's code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
PARENT_GONE_EXIT = 70  # EX_SOFTWARE: the parent was gone before the guard was set
GROUP_FLAG = "--group"
PARENT_DIED = signal.SIGUSR2  # with --group: the wrapper's death signal, caught to kill the group
# SIGKILL, not SIGTERM: on SIGTERM llama.cpp's server (uvicorn) shuts down gracefully, which
# means waiting for every queued generation to finish for a client that no longer exists (seen
# here: an orphan kept generating for minutes after its parent was killed).


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Request ``signum`` when the parent dies; ``False`` where Linux's prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _kill_group(signum: int, frame: object) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _ignore(signum: int, frame: object) -> None:
    """A handler, not SIG_IGN: handlers are reset by exec, so the server still gets the signal."""


def supervise(expected_parent: int, command: list[str]) -> int:
    """Run ``command`` as a child; SIGKILL our whole process group when our parent dies."""
    signal.signal(PARENT_DIED, _kill_group)
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    armed = set_parent_death_signal(PARENT_DIED)
    if os.getppid() != expected_parent:
        return PARENT_GONE_EXIT
    if not armed:  # no prctl here: nothing to watch for, be the command itself
        os.execvp(command[0], command)
    child = subprocess.Popen(command)
    code = child.wait()
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    group = bool(argv) and argv[0] == GROUP_FLAG
    if group:
        argv = argv[1:]
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m drpo.die_with_parent [--group] PARENT_PID COMMAND [ARG...]", file=sys.stderr)
        return 2
    expected_parent, command = int(argv[0]), argv[1:]
    if group:
        return supervise(expected_parent, command)
    set_parent_death_signal()
    if os.getppid() != expected_parent:
        return PARENT_GONE_EXIT
    os.execvp(command[0], command)  # replaces this process; returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
