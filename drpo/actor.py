"""Who a change made from this machine's command line goes on record as in the store's audit log."""

from __future__ import annotations

import getpass
import os

ACTOR_ENV = "DRPO_ACTOR"  # set by a process that runs the CLI on someone's behalf (the worker, the admin API)


def cli_actor() -> str:
    """``DRPO_ACTOR`` if set, else ``cli:USER`` (the login name, never a credential); ``cli`` when unknown."""
    delegated = os.environ.get(ACTOR_ENV, "").strip()
    if delegated:
        return delegated[:128]
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER in the environment
        return "cli"
