"""What the proxy and the optimizer both know about backend dialects, written once.

A backend's *kind* decides which compatibility fixes apply. It is configured, or
recognised from the ``owned_by`` field of its ``/v1/models`` entries:

    owned_by                         kind
    "me" (llama-cpp-python server)   llamacpp
    "llamacpp" (llama.cpp C++ server), "llama-cpp", "llama.cpp"
                                     llamacpp
    "vllm"                           vllm
    anything else, or nothing        openai

llama.cpp's servers grammar-constrain ``response_format: {"type": "json_object",
"schema": {...}}`` but reject OpenAI's ``{"type": "json_schema", "json_schema":
{...}}``; :func:`llamacpp_json_format` builds the first, and
:func:`rewrite_json_schema_format` turns a client's second into the first.

vLLM (``kind: vllm``) speaks OpenAI's API with extras, and the proxy changes little:

- structured outputs: vLLM constrains OpenAI's ``json_schema`` response format itself, on
  ``/v1/chat/completions`` *and* ``/v1/completions``, so it passes through; llama.cpp's
  ``json_object`` + ``schema`` form, which vLLM reads as "any JSON object", is turned into
  ``json_schema`` (:func:`rewrite_json_object_schema_format`), and a chat request served
  through the completion layout keeps its response format (:func:`vllm_completion_format`)
  where other backends' ``/v1/completions`` would reject it;
- usage: vLLM sends the final ``choices: []`` usage chunk for
  ``stream_options.include_usage`` itself (with ``prompt_tokens_details.cached_tokens`` when
  started with ``--enable-prompt-tokens-details``), so nothing is estimated;
- its extra request fields (:data:`VLLM_EXTRA_FIELDS`: ``top_k``, ``min_p``,
  ``repetition_penalty``, ``structured_outputs``, the older ``guided_*``...) are forwarded
  unchanged in both layouts;
- discovery: ``owned_by: "vllm"`` on its ``/v1/models`` entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

DetectedKind = Literal["llamacpp", "vllm", "openai"]

LLAMACPP: DetectedKind = "llamacpp"
VLLM: DetectedKind = "vllm"
OPENAI: DetectedKind = "openai"

_KIND_BY_OWNER: dict[str, DetectedKind] = {
    "me": LLAMACPP,
    "llamacpp": LLAMACPP,
    "llama-cpp": LLAMACPP,
    "llama.cpp": LLAMACPP,
    "vllm": VLLM,
}


def kind_from_owners(owners: Iterable[str]) -> DetectedKind:
    """The kind named by the first recognised ``owned_by`` value; ``openai`` when none is."""
    for owner in owners:
        kind = _KIND_BY_OWNER.get(owner.strip().lower())
        if kind is not None:
            return kind
    return OPENAI


def kind_from_models(entries: Iterable[dict[str, Any]]) -> DetectedKind:
    """The kind of a backend from its ``/v1/models`` ``data`` entries."""
    return kind_from_owners(str(entry.get("owned_by") or "") for entry in entries)


# vLLM's request fields beyond OpenAI's (sampling, structured outputs, prompt handling),
# forwarded as they came. ``guided_*`` are the structured-output fields of vLLM before 0.12,
# ``structured_outputs`` their replacement. None of them is chat-only: the completion layout
# keeps them too.
VLLM_EXTRA_FIELDS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "min_tokens",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "allowed_token_ids",
        "bad_words",
        "use_beam_search",
        "prompt_logprobs",
        "priority",
        "cache_salt",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_whitespace_pattern",
        "guided_decoding_backend",
    }
)
VLLM_SCHEMA_NAME = "response"  # OpenAI's json_schema needs a name; llama.cpp's form has none


def llamacpp_json_format(schema: Any) -> dict[str, Any]:
    """The ``response_format`` llama.cpp constrains with a grammar (no schema: any JSON object)."""
    out: dict[str, Any] = {"type": "json_object"}
    if schema is not None:
        out["schema"] = schema
    return out


def rewrite_json_schema_format(body: dict[str, Any]) -> bool:
    """OpenAI's ``json_schema`` response format → llama.cpp's ``json_object`` + ``schema``, in place.

    Only ``response_format`` changes (``name`` and ``strict`` have no llama.cpp
    equivalent: its grammar is always strict). Returns whether the body changed.
    """
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return False
    spec = rf.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    body["response_format"] = llamacpp_json_format(schema)
    return True


def vllm_json_format(schema: Any, name: str = VLLM_SCHEMA_NAME) -> dict[str, Any]:
    """The ``response_format`` vLLM constrains to ``schema`` (no schema: any JSON object)."""
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def rewrite_json_object_schema_format(body: dict[str, Any]) -> bool:
    """llama.cpp's ``json_object`` + ``schema`` → OpenAI's ``json_schema``, in place, for vLLM.

    vLLM would ignore the ``schema`` key and allow any JSON object. Returns whether the
    body changed; every other response format is left alone.
    """
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_object" or rf.get("schema") is None:
        return False
    body["response_format"] = vllm_json_format(rf["schema"])
    return True


def vllm_completion_format(chat_body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` a vLLM ``/v1/completions`` request keeps from a chat request.

    vLLM's completions endpoint honours ``json_schema`` and ``json_object``; other
    backends' do not, which is why the completion layout drops the field elsewhere.
    """
    body = {"response_format": chat_body.get("response_format")}
    rewrite_json_object_schema_format(body)
    rf = body["response_format"]
    return rf if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object") else None
