"""The store's first layout and its rollback rule, as references for the store tests.

The first layout (before append-only rows) kept pickled tuple keys and JSON lists that grew
with every version and activation; rollback replayed the whole history. Tests build such
stores with raw diskcache calls and check the current store against the old rule.
"""

from __future__ import annotations

from pathlib import Path

import diskcache
import orjson

from prompts.artifact import Artifact


def reference_stack(history: list[tuple[str, str]]) -> list[str]:
    """The activation stack as the store defined it before rows had links: replay everything."""
    stack: list[str] = []
    for version, action in history:
        if action == "rollback" and stack:
            stack.pop()
            if stack and stack[-1] == version:
                continue
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def reference_rollback(history: list[tuple[str, str]], active: str | None) -> str | None:
    if active is None:
        return None
    stack = reference_stack(history)
    while stack and stack[-1] == active:
        stack.pop()
    return stack[-1] if stack else None


def write_old_layout(directory: Path, artifacts: list[Artifact], history: list[tuple[str, str]], active: str) -> None:
    """A store as the first layout wrote it: pickled tuple keys, JSON lists, default settings."""
    with diskcache.Cache(str(directory), timeout=30) as raw:
        for artifact in artifacts:
            raw.set(("artifact", artifact.model, artifact.version), artifact.to_json())
        listed = [{"version": a.version, "added_at": f"2024-01-01T00:00:{n:06d}Z"} for n, a in enumerate(artifacts)]
        raw.set(("versions", "m"), orjson.dumps(listed))
        entries = [{"version": v, "at": f"2024-02-01T{n:06d}", "action": act} for n, (v, act) in enumerate(history)]
        raw.set(("history", "m"), orjson.dumps(entries))
        raw.set(("active", "m"), active)
        raw.set("generation", len(history) + 3)


def old_history(versions: list[str], length: int) -> tuple[list[tuple[str, str]], str]:
    """A plausible old history: activations, with a rollback every few steps (old rules)."""
    history: list[tuple[str, str]] = []
    active = versions[0]
    for n in range(length):
        target = reference_rollback(history, active) if n % 5 == 4 else None
        if target is not None:
            history.append((target, "rollback"))
            active = target
        else:
            active = versions[(n * 13) % len(versions)]
            history.append((active, "activate"))
    return history, active
