"""Importing the reference implementation's released prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompts.errors import InvalidArtifact
from prompts.import_drpo import (
    IMPORT_METHOD,
    import_drpo_dir,
    parse_icl_examples,
    parse_output,
    strip_markers,
)
from prompts.layout import END_MARKER, START_MARKER

RELEASED = ["gpt-3.5-turbo", "llama3-8b-instruct", "mistral-7b-v0.1"]


@pytest.mark.parametrize("name", RELEASED)
def test_released_prompts_import(shared_data: Path, name: str) -> None:
    directory = shared_data / "drpo-released" / name
    icl = shared_data / "drpo-train" / "ICL_examples.json"
    artifact = import_drpo_dir(directory, model=f"local/{name}", icl=icl)

    levels = json.loads((directory / "output.json").read_text())
    assert artifact.system_prompt == levels["level 30"]["Prompt"].strip()
    assert artifact.system_prompt != levels["level 3"]["Prompt"].strip()
    assert artifact.model == f"local/{name}"
    assert len(artifact.examples) == 16
    for example in artifact.examples:
        for text in (example.query, example.answer):
            assert START_MARKER not in text and END_MARKER not in text
            assert text == text.strip() and text
    reference = json.loads(icl.read_text())
    first_query = next(iter(reference))
    assert artifact.examples[0].query == first_query
    assert reference[first_query].strip().removeprefix(START_MARKER).removesuffix(END_MARKER).strip() == (
        artifact.examples[0].answer
    )
    assert artifact.provenance.method == IMPORT_METHOD
    assert artifact.provenance.details["level"] == 30
    assert artifact.provenance.details["source"] == str((directory / "output.json").resolve())
    assert artifact.provenance.details["examples_source"] == str(icl.resolve())
    assert 1.0 <= artifact.provenance.scores["reference_last_level_mean"] <= 5.0


def test_examples_default_to_dir_file(tmp_path: Path) -> None:
    (tmp_path / "output.json").write_text(json.dumps({"level 1": {"Prompt": "P1"}}))
    assert import_drpo_dir(tmp_path, "m").examples == ()
    (tmp_path / "ICL_examples.json").write_text(json.dumps({"q": f"{START_MARKER}\nanswer\n{END_MARKER}"}))
    artifact = import_drpo_dir(tmp_path, "m")
    assert [(e.query, e.answer) for e in artifact.examples] == [("q", "answer")]
    assert artifact.provenance.scores == {}


def test_last_level_is_numeric_not_lexical() -> None:
    data = {f"level {n}": {"Prompt": f"prompt {n}", "Evaluation of the prompt": {}} for n in (1, 2, 9, 10, 11)}
    released = parse_output(json.dumps(data))
    assert (released.level, released.prompt, released.levels) == (11, "prompt 11", 5)


def test_scores_parse_strings_and_skip_garbage() -> None:
    evaluation = {"Helpfulness": {"score": "5"}, "Clarity": {"score": 3}, "Depth": {"score": "n/a"}, "Odd": 4}
    released = parse_output(json.dumps({"level 1": {"Prompt": "p", "Evaluation of the prompt": evaluation}}))
    assert released.aspect_scores == {"Helpfulness": 5.0, "Clarity": 3.0, "Odd": 4.0}
    assert released.mean_score == 4.0


def test_strip_markers() -> None:
    assert strip_markers(f"{START_MARKER}\n  Hello\n{END_MARKER}") == "Hello"
    assert strip_markers("plain") == "plain"
    assert strip_markers(f"a{END_MARKER}b") == "ab"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{oops", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("{}", "no 'level N'"),
        ('{"stage 1": {"Prompt": "x"}}', "no 'level N'"),
        ('{"level 1": "just text"}', "not an object"),
        ('{"level 1": {"Prompt": "ok"}, "level 2": {"Prompt": ""}}', "non-empty 'Prompt'"),
        ('{"level 1": {"prompt": "lower-case key"}}', "non-empty 'Prompt'"),
        ('{"level 1": {"Prompt": 5}}', "non-empty 'Prompt'"),
    ],
)
def test_malformed_output(raw: str, message: str) -> None:
    with pytest.raises(InvalidArtifact, match=message):
        parse_output(raw, "output.json")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nope", "not valid JSON"),
        ('["q", "a"]', "JSON object"),
        ('{"q": 1}', "not a string"),
        ('{"q": "<START>\\n<END>"}', "empty query or answer"),
        ('{" ": "a"}', "empty query or answer"),
    ],
)
def test_malformed_examples(raw: str, message: str) -> None:
    with pytest.raises(InvalidArtifact, match=message):
        parse_icl_examples(raw)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact, match="cannot read"):
        import_drpo_dir(tmp_path, "m")
    (tmp_path / "output.json").write_text(json.dumps({"level 1": {"Prompt": "p"}}))
    with pytest.raises(InvalidArtifact, match="cannot read"):
        import_drpo_dir(tmp_path, "m", icl=tmp_path / "missing.json")


def test_empty_model_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "output.json").write_text(json.dumps({"level 1": {"Prompt": "p"}}))
    with pytest.raises(InvalidArtifact, match="cannot build"):
        import_drpo_dir(tmp_path, "")
