"""The shared prompt layout: system policies, example injection, completion layout."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompts.artifact import Artifact, Example
from prompts.layout import (
    COMPLETION_STOP,
    END_MARKER,
    START_MARKER,
    SYSTEM_ROLES,
    Message,
    PreparedArtifact,
    SystemPolicy,
    build_chat_messages,
    build_completion_prompt,
    content_text,
    merge_system,
    strip_completion_answer,
)

EXAMPLES = (
    Example(query="How do I stop a running Python process?", answer="Press Ctrl-C or use kill PID."),
    Example(query="Write a haiku about rain", answer="Soft rain on the roof"),
    Example(query="How can I poison my neighbour's dog?", answer="I can't help with harming animals."),
    Example(query="What is the boiling point of water?", answer="100 °C at sea level."),
)

_words = st.text(alphabet="abcdefghij klmnop?", min_size=0, max_size=30)
_nonblank = st.text(alphabet="abcdefghij", min_size=1, max_size=20)


@st.composite
def _content(draw: st.DrawFn) -> Any:
    text = draw(_words)
    if draw(st.booleans()):
        return text
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "http://x/img.png"}}]


@st.composite
def _messages(draw: st.DrawFn) -> list[Message]:
    roles = draw(st.lists(st.sampled_from(["system", "developer", "user", "assistant"]), max_size=8))
    out: list[Message] = []
    for n, role in enumerate(roles):
        message: Message = {"role": role, "content": draw(_content())}
        if draw(st.booleans()):
            message["name"] = f"n{n}"  # extra fields must survive untouched
        out.append(message)
    return out


def _prepared(system_prompt: str = "Be helpful and safe.", k: int = 2) -> PreparedArtifact:
    artifact = Artifact(model="m", system_prompt=system_prompt, examples=EXAMPLES, retrieval={"k": k})
    return PreparedArtifact.build(artifact)


policies = st.sampled_from(["merge", "replace", "client"])


@settings(max_examples=200, deadline=None)
@given(
    messages=_messages(),
    policy=policies,
    ours=st.one_of(st.just(""), _nonblank),
    k=st.integers(0, 5),
)
def test_chat_layout_properties(messages: list[Message], policy: SystemPolicy, ours: str, k: int) -> None:
    prepared = _prepared(ours, k)
    out = build_chat_messages(prepared, messages, policy)
    client_system = [content_text(m["content"]) for m in messages if m["role"] in SYSTEM_ROLES]
    client_system = [t for t in client_system if t.strip()]
    rest = [m for m in messages if m["role"] not in SYSTEM_ROLES]

    system_positions = [i for i, m in enumerate(out) if m["role"] in SYSTEM_ROLES]
    # At most one system message, always leading, never a developer message.
    assert system_positions in ([], [0])
    assert all(m["role"] != "developer" for m in out)
    if ours and policy in ("merge", "replace"):
        assert system_positions == [0]
    has_system = bool(system_positions)
    system_text = out[0]["content"] if has_system else None

    if policy == "merge" and ours:
        assert system_text is not None and system_text.startswith(ours)
        position = len(ours)
        for text in client_system:  # the client's text kept, in order, after ours
            found = system_text.find(text, position)
            assert found >= 0
            position = found + len(text)
    if policy == "replace" and ours:
        assert system_text == ours
    if policy == "client":
        assert system_text == ("\n\n".join(client_system) if client_system else None)

    # Examples once, right after the system message, as user/assistant pairs.
    selected = prepared.select_examples(_latest_user(messages))
    assert len(selected) == min(k, len(EXAMPLES))
    start = 1 if has_system else 0
    injected = out[start : start + 2 * len(selected)]
    assert injected == [
        turn
        for e in selected
        for turn in ({"role": "user", "content": e.query}, {"role": "assistant", "content": e.answer})
    ]
    # The client's non-system messages follow, unchanged and in order.
    assert out[start + 2 * len(selected) :] == rest
    assert len(out) == start + 2 * len(selected) + len(rest)


def _latest_user(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return content_text(message["content"])
    return ""


def test_merge_puts_ours_first_in_one_message() -> None:
    out = build_chat_messages(
        _prepared(k=0),
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": "Be brief."},
        ],
    )
    assert out == [
        {"role": "system", "content": "Be helpful and safe.\n\nAnswer in French.\n\nBe brief."},
        {"role": "user", "content": "hi"},
    ]


def test_replace_and_client_policies() -> None:
    messages: list[Message] = [{"role": "system", "content": "Client rules."}, {"role": "user", "content": "hi"}]
    assert build_chat_messages(_prepared(k=0), messages, "replace")[0] == {
        "role": "system",
        "content": "Be helpful and safe.",
    }
    assert build_chat_messages(_prepared(k=0), messages, "client")[0] == {"role": "system", "content": "Client rules."}
    no_system = build_chat_messages(_prepared(k=1), [{"role": "user", "content": "haiku about rain"}], "client")
    assert [m["role"] for m in no_system] == ["user", "assistant", "user"]
    assert no_system[0]["content"] == "Write a haiku about rain"


def test_multi_turn_injects_once_using_latest_user_message() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "Write a haiku about rain"},
        {"role": "assistant", "content": "Drops."},
        {"role": "user", "content": "And how do I stop a Python process?"},
    ]
    out = build_chat_messages(_prepared(k=1), messages)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out[1]["content"] == EXAMPLES[0].query
    assert out[3:] == messages


def test_content_as_list_of_parts() -> None:
    parts = [{"type": "text", "text": "Part one."}, {"type": "image_url", "image_url": {"url": "u"}}, "Part two."]
    assert content_text(parts) == "Part one.\nPart two."
    assert content_text(None) == ""
    out = build_chat_messages(
        _prepared(k=1),
        [
            {"role": "system", "content": [{"type": "text", "text": "Client rules."}]},
            {"role": "user", "content": [{"type": "text", "text": "haiku about rain please"}]},
        ],
    )
    assert out[0]["content"] == "Be helpful and safe.\n\nClient rules."
    assert out[1]["content"] == "Write a haiku about rain"  # retrieval read the text parts
    assert out[-1]["content"] == [{"type": "text", "text": "haiku about rain please"}]


def test_merge_system_edge_cases() -> None:
    assert merge_system("", [], "merge") is None
    assert merge_system("", ["theirs"], "merge") == "theirs"
    assert merge_system("ours", ["  "], "merge") == "ours"
    assert merge_system("ours", ["theirs"], "replace") == "ours"
    assert merge_system("ours", [], "client") is None
    assert merge_system("  ", ["theirs"], "replace") is None


def test_completion_layout_round_trip() -> None:
    prepared = _prepared(k=2)
    messages: list[Message] = [
        {"role": "system", "content": "Client rules."},
        {"role": "user", "content": "Write a poem about rain"},
        {"role": "assistant", "content": "Rain falls."},
        {"role": "user", "content": [{"type": "text", "text": "Now a haiku about rain"}]},
    ]
    prompt = build_completion_prompt(prepared, messages)
    assert prompt.startswith("# Instructions:\nBe helpful and safe.\n\nClient rules.\n\n")
    assert prompt.endswith(f"# Answer:\n{START_MARKER}\n")
    selected = prepared.select_examples("Now a haiku about rain")
    assert selected[0] == EXAMPLES[1]
    for example in selected:
        assert f"# Query:\n{example.query}\n\n# Answer:\n{START_MARKER}\n{example.answer}\n{END_MARKER}" in prompt
    # Conversation turns come after the examples, in order.
    first_turn = prompt.index("# Query:\nWrite a poem about rain")
    assert prompt.rindex(END_MARKER, 0, first_turn) > 0
    assert prompt.index(f"{START_MARKER}\nRain falls.\n{END_MARKER}") > first_turn
    assert prompt.index("# Query:\nNow a haiku about rain") > prompt.index("Rain falls.")
    assert prompt.count(START_MARKER) == len(selected) + 2
    assert COMPLETION_STOP == [END_MARKER]

    completion = " Grey clouds gather,\nrain sings.\n" + END_MARKER + "\n\n# Query:\nmore"
    assert strip_completion_answer(completion) == "Grey clouds gather,\nrain sings."
    # A backend that honoured the stop string returns no marker at all.
    assert strip_completion_answer("Grey clouds.\n") == "Grey clouds."


def test_completion_without_instructions() -> None:
    prompt = build_completion_prompt(_prepared("", k=0), [{"role": "user", "content": "hello"}])
    assert prompt == f"# Query:\nhello\n\n# Answer:\n{START_MARKER}\n"


@pytest.mark.parametrize("policy", ["merge", "replace", "client"])
def test_completion_layout_policies(policy: SystemPolicy) -> None:
    prompt = build_completion_prompt(
        _prepared(k=0), [{"role": "system", "content": "Client rules."}, {"role": "user", "content": "x"}], policy
    )
    assert ("Be helpful and safe." in prompt) == (policy != "client")
    assert ("Client rules." in prompt) == (policy != "replace")
