"""A readable unified diff of two artifacts (``drpo prompts diff`` and the admin API share it)."""

from __future__ import annotations

import difflib

from prompts.artifact import Artifact


def artifact_lines(artifact: Artifact) -> list[str]:
    """An artifact as lines for a diff: settings, the system prompt, then each example."""
    lines = [f"layout: {artifact.layout}", f"retrieval: {artifact.retrieval.model_dump_json()}", "", "[system prompt]"]
    lines += artifact.system_prompt.splitlines()
    for example in artifact.examples:
        label = f" ({example.label})" if example.label else ""
        lines += ["", f"[example{label}] Q: {example.query}"]
        lines += [f"A: {line}" for line in example.answer.splitlines()]
    return lines


def artifact_diff(first: Artifact, second: Artifact) -> str:
    """Unified diff text, headed by the two version ids; empty when they show the model the same."""
    lines = difflib.unified_diff(
        artifact_lines(first), artifact_lines(second), first.version, second.version, lineterm=""
    )
    return "\n".join(lines)
