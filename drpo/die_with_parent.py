"""Exec wrapper: ``python -m drpo.die_with_parent PARENT_PID COMMAND...``.

Runs in the freshly started child, before the real program. It asks Linux to SIGKILL
this process when its parent dies (``PR_SET_PDEATHSIG`` survives ``execv``), then checks
that the parent is still ``PARENT_PID``: if the parent died before the request was made,
no signal would ever come, so the wrapper exits instead of starting an orphan. Then it
replaces itself with COMMAND.

Doing this here, after the child has started, instead of in ``subprocess``'s
``preexec_fn`` keeps the parent's fork free of Python code, which is unsafe in a
threaded parent. Only the standard library is imported: this runs on every start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_GONE_EXIT = 70  # EX_SOFTWARE: the parent was gone before the guard was set
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


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m drpo.die_with_parent PARENT_PID COMMAND [ARG...]", file=sys.stderr)
        return 2
    expected_parent, command = int(argv[0]), argv[1:]
    set_parent_death_signal()
    if os.getppid() != expected_parent:
        return PARENT_GONE_EXIT
    os.execvp(command[0], command)  # replaces this process; returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
