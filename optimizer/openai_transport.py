"""The real :class:`~optimizer.llm.Transport`: the official ``openai`` async SDK.

One ``AsyncOpenAI`` per (base_url, key). The SDK's own retries are off: the client's
backoff does that, so every attempt is counted and visible.
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import openai

from optimizer.errors import RequestRejected, TransientLLMError
from optimizer.llm import Completion, Endpoint, Kind

# Local models can be slow to answer a long prompt on a busy CPU.
_TIMEOUT = 600.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_after(error: openai.APIStatusError) -> float | None:
    return retry_after_seconds(error.response.headers.get("retry-after"))


class OpenAITransport:
    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}

    def _client(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        # Local servers need no key, but the SDK insists on one.
        key = endpoint.api_key or "not-needed"
        slot = (endpoint.base_url, key)
        if slot not in self._clients:
            self._clients[slot] = openai.AsyncOpenAI(
                base_url=endpoint.base_url, api_key=key, max_retries=0, timeout=_TIMEOUT
            )
        return self._clients[slot]

    async def create(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion:
        client = self._client(endpoint)
        try:
            if kind == "chat":
                chat = await client.chat.completions.create(**body)
                choice = chat.choices[0]
                text = choice.message.content or ""
                finish = choice.finish_reason
                usage = chat.usage
            else:
                comp = await client.completions.create(**body)
                text = comp.choices[0].text
                finish = comp.choices[0].finish_reason
                usage = comp.usage
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise TransientLLMError(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status >= 500 and "response_format" in exc.message:
                # llama-cpp-python answers an unsupported response_format with a 500.
                raise RequestRejected(f"HTTP {status}: response_format rejected", 400) from exc
            if status == 429 or status >= 500:
                raise TransientLLMError(f"HTTP {status}", _retry_after(exc)) from exc
            raise RequestRejected(f"HTTP {status}: {exc.message[:300]}", status) from exc
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else max(1, len(text) // 4)
        return Completion(text, prompt_tokens, completion_tokens, finish)

    async def model_owners(self, endpoint: Endpoint) -> list[str]:
        try:
            page = await self._client(endpoint).models.list()
        except openai.OpenAIError:
            return []
        return [str(getattr(m, "owned_by", "") or "") for m in page.data]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
