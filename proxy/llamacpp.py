"""Compatibility fixes for llama.cpp backends (``kind: llamacpp``, detected or configured).

Two gaps of llama-cpp-python's OpenAI server (0.3.x, our embedded default backend):

- it rejects ``response_format: {"type": "json_schema", "json_schema": {...}}`` with a 500
  but grammar-constrains ``{"type": "json_object", "schema": {...}}``, so
  :func:`rewrite_response_format` turns the first into the second;
- it ignores ``stream_options.include_usage``, so :class:`UsageFiller` adds the final
  ``choices: []`` usage chunk before ``data: [DONE]`` when the backend sent none.

How the usage is counted, and why: llama-cpp-python streams exactly one generated token
per chunk, so ``completion_tokens`` is the number of chunks carrying output (exact, except
the tokens of a matched stop string, which are never streamed). The prompt's token count
cannot be had exactly without extra work: the server's only tokenizer is
``POST /extras/tokenize/count`` (body ``{"model", "input"}``), which needs the prompt as
rendered by the model's chat template (the server does not expose it), and every request
to that server takes its single model lock, which by default (``interrupt_requests``)
*cuts short whatever stream is running*: an extra call per request would break other
clients' streams. So ``prompt_tokens`` is estimated from the text we forwarded (letter
runs, digits and other symbols count one each, plus ChatML-like framing per message;
within ~10 % of SmolLM2's tokenizer on our prompts), and the usage carries
``"estimated": true``. Nothing here touches the time to first token: the count runs as the
stream passes and the estimate at its end.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prompts.dialects import kind_from_models, rewrite_json_schema_format
from proxy.errors import BadBackendResponse
from proxy.streaming import (
    MalformedEvent,
    _chat_id,
    checked_choices,
    checked_usage,
    iter_events,
    parse_event,
    raw_events,
    sse_data,
)

# The dialect knowledge lives in prompts.dialects (the optimizer uses it too); these are its proxy names.
detect_kind = kind_from_models
rewrite_response_format = rewrite_json_schema_format


# Roughly one token each for SmolLM2-like BPE vocabularies (measured: 1.03 ± 0.06 tokens per piece).
_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
_PER_MESSAGE = 5  # <|im_start|> role \n ... <|im_end|> \n
_REPLY_PRIMER = 3  # <|im_start|> assistant \n


def _pieces(text: str) -> int:
    return len(_PIECES.findall(text))


def _content_pieces(content: Any) -> int:
    if isinstance(content, str):
        return _pieces(content)
    if isinstance(content, list):
        return sum(_pieces(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """An estimate of the prompt tokens of a chat (``messages``) or completion (``prompt``) body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = _REPLY_PRIMER
        for message in messages:
            if isinstance(message, dict):
                total += _PER_MESSAGE + _content_pieces(message.get("content"))
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return 1 + _pieces(prompt)  # + BOS
    if isinstance(prompt, list):
        return sum(1 + _pieces(p) for p in prompt if isinstance(p, str))
    return 0


_DONE_EVENT = re.compile(rb"(?:\A|(?<=[\r\n]))data: ?\[DONE\]")


class UsageFiller:
    """Watches a backend's stream; adds the usage chunk before ``[DONE]`` if the backend sent none.

    :meth:`observe` takes the backend's raw events (before any translation) and counts
    tokens; :meth:`insert` takes the block about to go to the client and puts the usage
    chunk in front of its ``data: [DONE]``; :meth:`tail` gives it for a stream that ended
    without ``[DONE]``. Exactly once, and never when the backend sent usage or an error.
    """

    __slots__ = ("_body", "_chat", "_created", "_id", "_model", "_tokens", "_upstream_usage", "done", "failed")

    def __init__(self, body: dict[str, Any], model: str, chat: bool) -> None:
        self._body = body  # what was forwarded, for the prompt estimate at the end
        self._model = model
        self._chat = chat  # the client gets chat.completion.chunk (else text_completion) events
        self._id: str | None = None
        self._created = int(time.time())
        self._tokens = 0
        self._upstream_usage = False
        self.failed = False
        self.done = False

    def observe(self, block: bytes) -> None:
        """Count the tokens of complete backend events; :class:`MalformedEvent` for a malformed one."""
        for start, event in raw_events(block):
            try:
                self._observe(event)
            except BadBackendResponse as exc:
                raise MalformedEvent(exc.message, block[:start]) from None

    def _observe(self, event: bytes) -> None:
        for kind, payload in iter_events(event):
            if kind != "data" or payload.strip() == b"[DONE]":
                continue
            data = parse_event(payload)
            if "error" in data:
                self.failed = True
                continue
            choices = checked_choices(data)
            if checked_usage(data) is not None:
                self._upstream_usage = True
            if self._id is None and isinstance(data.get("id"), str) and data["id"]:
                self._id = data["id"]
                created = data.get("created")
                if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 2**53:
                    self._created = created
                model = data.get("model")
                if isinstance(model, str) and model:
                    self._model = model
            for choice in choices:
                if _carries_a_token(choice):
                    self._tokens += 1

    def insert(self, block: bytes) -> bytes:
        if self.done:
            return block
        match = _DONE_EVENT.search(block)
        if match is None:
            return block
        return block[: match.start()] + self.tail() + block[match.start() :]

    def tail(self) -> bytes:
        """The usage event (once; empty when not needed)."""
        if self.done or self._upstream_usage or self.failed:
            self.done = True
            return b""
        self.done = True
        prompt = estimate_prompt_tokens(self._body)
        return sse_data(
            {
                "id": _chat_id(self._id) if self._chat else self._id or f"cmpl-{time.time_ns():x}",
                "object": "chat.completion.chunk" if self._chat else "text_completion",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": self._tokens,
                    "total_tokens": prompt + self._tokens,
                    "estimated": True,
                },
            }
        )


def _carries_a_token(choice: dict[str, Any]) -> bool:
    """One streamed token: a text piece (completions) or a content/tool delta (chat)."""
    if choice.get("finish_reason") is not None:
        return False  # llama-cpp-python's closing chunk: empty text / empty delta
    delta = choice.get("delta")
    if delta is None:
        return "text" in choice
    if not isinstance(delta, dict):
        raise BadBackendResponse("the backend sent a malformed chunk: a choice's 'delta' is not an object")
    return bool(delta) and "role" not in delta  # the opening role chunk carries none
