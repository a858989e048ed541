"""Request checks and prompt injection: the only place the proxy edits a request.

Validation is deliberately minimal (what injection and routing need: ``model`` is a
string, ``messages`` is a list of objects with a string ``role``); everything else is the
backend's business and passes through untouched. Full pydantic validation of every body
would cost more than the rest of the hot path together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prompts.config import FileConfig
from prompts.layout import (
    COMPLETION_STOP,
    PreparedArtifact,
    SystemPolicy,
    build_chat_messages,
    build_completion_prompt,
)
from prompts.retrieval import Scores
from proxy.errors import InvalidRequest

Mode = Literal["chat", "completion"]

# Chat-only fields that a /v1/completions endpoint would reject or misread.
_CHAT_ONLY = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
        "modalities",
        "audio",
        "store",
        "metadata",
        "reasoning_effort",
        "prediction",
        "web_search_options",
    }
)


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    mode: Mode | None
    system_policy: SystemPolicy
    k: int | None


class Policies:
    """Per-model options from the config file, resolved once per model id."""

    def __init__(self, file_config: FileConfig) -> None:
        self._policies = {model: ModelPolicy(o.mode, o.system_policy, o.k) for model, o in file_config.models.items()}
        self._default = ModelPolicy(None, "merge", None)

    def get(self, model: str) -> ModelPolicy:
        return self._policies.get(model, self._default)


def parse_model(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    return model


def check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]")
    return messages


def _chars(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
    return total


def inject_chat(
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    prepared: PreparedArtifact,
    policy: ModelPolicy,
    scores: Scores | None = None,
) -> int:
    """Replace ``body["messages"]`` in place; returns the number of characters added."""
    new = build_chat_messages(prepared, messages, policy.system_policy, policy.k, scores)
    body["messages"] = new
    return max(0, _chars(new) - _chars(messages))


def completion_body(
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    prepared: PreparedArtifact,
    policy: ModelPolicy,
    scores: Scores | None = None,
) -> tuple[dict[str, Any], int]:
    """The /v1/completions request for a chat request to a completion-mode model."""
    prompt = build_completion_prompt(prepared, messages, policy.system_policy, policy.k, scores)
    out = {k: v for k, v in body.items() if k not in _CHAT_ONLY}
    if "max_tokens" not in out and isinstance(body.get("max_completion_tokens"), int):
        out["max_tokens"] = body["max_completion_tokens"]
    out["prompt"] = prompt
    client_stop = body.get("stop")
    if isinstance(client_stop, str):
        client_stop = [client_stop]
    stops = list(COMPLETION_STOP)
    if isinstance(client_stop, list):
        stops += [s for s in client_stop if isinstance(s, str) and s not in stops]
    out["stop"] = stops
    return out, max(0, len(prompt) - _chars(messages))
