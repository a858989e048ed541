"""Who a change made from this machine's command line goes on record as in the store's audit log."""

from __future__ import annotations

import getpass


def cli_actor() -> str:
    """``cli:USER`` (the login name, never a credential); ``cli`` when it cannot be found."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER in the environment
        return "cli"
