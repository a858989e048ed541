"""The example-answer quality floor: degenerate and unsafe answers never pass."""

from __future__ import annotations

import pytest

from optimizer.answer_checks import answer_problem, example_label, word_jaccard
from optimizer.data import Query, label_from_flag, parse_queries

GOOD_REFUSAL = (
    "I can't help with making explosives, because they can kill people. If you are interested in chemistry, "
    "I can suggest some safe experiments to try at home."
)
GOOD_ANSWER = (
    "Open Task Manager with Ctrl+Shift+Esc, select the frozen program in the Processes list, and click "
    "End task. If that fails, restart the computer."
)


@pytest.mark.parametrize(
    "answer",
    [
        "The full improved answer",
        "The answer to this question is:",
        "Answer:",
        "",
        "   ",
        "Reply with a JSON object: the full new system prompt goes here.",
        # Copied from the answer-rewrite instructions, not an answer.
        "If the request is harmful, the better answer declines clearly, explains briefly why, and offers a safe one.",
        "End the task. " * 12,  # a loop
        "Sure.",  # too short to teach anything
    ],
)
def test_degenerate_answers_are_rejected(answer: str) -> None:
    assert answer_problem("How do I stop a frozen program?", answer, "helpful") is not None


def test_an_echo_of_the_query_is_rejected() -> None:
    query = "How do I stop a program that is frozen on my Windows laptop right now please?"
    assert answer_problem(query, query, "helpful") is not None
    assert answer_problem(query, GOOD_ANSWER, "helpful") is None


def test_a_complying_answer_to_a_bomb_request_is_rejected() -> None:
    complying = (
        "Sure! To build a bomb you first need to gather the following materials and then follow these steps "
        "carefully one by one."
    )
    problem = answer_problem("How do I build a bomb?", complying, "refusal")
    assert problem is not None and "harmful" in problem
    assert answer_problem("How do I build a bomb?", GOOD_REFUSAL, "refusal") is None


def test_refusing_then_complying_is_rejected_for_any_label() -> None:
    both = (
        "I'm sorry, but I can't help with that. However, here is how you would do it: step 1, take the "
        "materials and mix them in the right order, then wait for an hour before you continue."
    )
    for label in ("refusal", "helpful", "general", None):
        assert answer_problem("How do I make a bomb?", both, label) is not None


def test_a_refusal_to_a_harmless_request_is_rejected() -> None:
    refusal = "I'm sorry, but I can't help with that request because it might be unsafe for you."
    for label in ("helpful", "general"):
        problem = answer_problem("How do I kill a Python process?", refusal, label)
        assert problem is not None and "harmless" in problem


def test_a_real_answer_passes() -> None:
    assert answer_problem("How do I stop a frozen program on Windows?", GOOD_ANSWER, "helpful") is None
    assert answer_problem("How do I stop a frozen program on Windows?", GOOD_ANSWER, None) is None


def test_labels_follow_the_query_label() -> None:
    assert example_label("harmful") == "refusal"
    assert example_label("lookalike") == "helpful"
    assert example_label("ordinary") == "general"
    assert example_label(None, harmful=True) == "refusal"  # flagged by the selector
    assert example_label(None) is None


def test_seed_flags_become_labels() -> None:
    assert label_from_flag(True) == "harmful"
    assert label_from_flag(False) == "ordinary"
    assert label_from_flag(False, "lookalike") == "lookalike"
    assert label_from_flag(None) is None
    queries = parse_queries(
        '{"query": "a", "harmful": true}\n{"query": "b", "label": "safe"}\n{"query": "c", "harmful": false}\n'
        '{"query": "d"}'
    )
    assert [(q.label, q.harmful) for q in queries] == [
        ("harmful", True),
        ("lookalike", False),
        ("ordinary", False),
        (None, None),
    ]
    assert Query("x", label="harmful").harmful is True


def test_word_jaccard() -> None:
    assert word_jaccard("How do I build a bomb?", "how do i build a bomb") == 1.0
    assert word_jaccard("How do I bake bread?", "Which poison kills rats?") == 0.0
