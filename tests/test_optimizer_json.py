"""The JSON helpers behind structured replies: strict first, tolerant as a fallback."""

from __future__ import annotations

import json

import pytest

from optimizer.llm import extract_json_object, strict_json


def test_strict_rejects_raw_newlines_inside_strings() -> None:
    with pytest.raises(json.JSONDecodeError):
        strict_json('{"answer": "line one\nline two"}')


def test_tolerant_recovers_raw_newlines_and_surrounding_prose() -> None:
    text = 'Sure! Here it is: {"answer": "line one\nline two\tend", "score": 4} Hope that helps.'
    assert extract_json_object(text) == {"answer": "line one\nline two\tend", "score": 4}


def test_tolerant_skips_non_objects_and_finds_the_first_object() -> None:
    assert extract_json_object('[1, 2] then {"a": {"b": 1}} and {"c": 2}') == {"a": {"b": 1}}


def test_tolerant_gives_up_clearly() -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json_object('{"unterminated": "string')


def test_degenerate_prompt_rewrites_are_rejected() -> None:
    from optimizer.beam import MIN_PROMPT_CHARS, rewrite_problem

    # Seen in a real self-alignment run: the 135M optimizer echoed the reply template.
    assert rewrite_problem("the full new system prompt") is not None
    assert rewrite_problem("   ") == "the system prompt is empty"
    good = "You are a careful assistant.\n- Answer directly.\n- Say when you lack real-time data.\n- Refuse harm."
    assert len(good) >= MIN_PROMPT_CHARS
    assert rewrite_problem(good) is None
