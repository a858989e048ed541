"""What the proxy serves a model id, and the version names the command line and admin API accept."""

from __future__ import annotations

from prompts.artifact import Artifact
from prompts.defaults import default_artifact
from prompts.store import PromptStore


def served_artifact(store: PromptStore, model: str) -> tuple[Artifact, bool]:
    """The active version of ``model``, or the built-in default when it has none (then True)."""
    active = store.active_version(model)
    return (default_artifact(), True) if active is None else (store.get(model, active), False)


def artifact_by_spec(store: PromptStore, model: str, spec: str) -> tuple[Artifact, bool]:
    """``spec``: a version id or unique prefix, ``active`` (what is served) or ``default``; True if built-in."""
    if spec == "default":
        return default_artifact(), True
    if spec == "active":
        return served_artifact(store, model)
    return store.get(model, spec), False
