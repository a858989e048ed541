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
