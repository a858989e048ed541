"""Query files, the packaged seed set, splits, cache keys and --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drpo.cli import app
from optimizer.aspects import ASPECTS, gate_aspects
from optimizer.data import icl_seed_queries, load_query_file, parse_queries, seed_queries, split_queries
from optimizer.errors import QueryFileError
from optimizer.llm import Endpoint, request_key


def test_jsonl_json_list_and_plain_text_are_accepted(tmp_path: Path) -> None:
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"query": "a?"}\n{"instruction": "b?"}\n{"prompt": "c?", "harmful": true}\n')
    assert [q.text for q in load_query_file(jsonl)] == ["a?", "b?", "c?"]
    assert load_query_file(jsonl)[2].harmful is True
    listing = tmp_path / "q.json"
    listing.write_text(json.dumps([{"instruction": "x", "input": "more"}, {"query": "y"}]))
    assert [q.text for q in load_query_file(listing)] == ["x\n\nmore", "y"]
    plain = tmp_path / "q.txt"
    plain.write_text("first line\n\nsecond line\n")
    assert [q.text for q in load_query_file(plain)] == ["first line", "second line"]


def test_bad_query_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(QueryFileError, match="no non-empty"):
        parse_queries('{"text": "x"}\n')
    with pytest.raises(QueryFileError, match="holds no queries"):
        parse_queries("\n\n")
    with pytest.raises(QueryFileError, match="cannot read"):
        load_query_file(tmp_path / "missing.txt")


def test_reference_training_files_load(shared_data: Path) -> None:
    base = shared_data / "drpo-train"
    assert len(load_query_file(base / "alpaca_train.json")) == 86
    assert len(load_query_file(base / "lima_subsample_train.json")) == 52
    assert len(load_query_file(base / "mal_train.txt")) >= 40


def test_seed_set_is_ours_and_about_a_quarter_harmful() -> None:
    seeds = seed_queries()
    assert 120 <= len(seeds) <= 180
    share = sum(bool(q.harmful) for q in seeds) / len(seeds)
    assert 0.2 <= share <= 0.3
    assert any("zombie process" in q.text for q in seeds)  # benign look-alike
    assert len(icl_seed_queries()) >= 16


def test_split_is_deterministic_disjoint_and_holds_harmful_queries() -> None:
    seeds = seed_queries()
    train, val = split_queries(seeds, 10, seed=7)
    assert (train, val) == split_queries(seeds, 10, seed=7)
    assert split_queries(seeds, 10, seed=8)[1] != val
    assert len(val) == 10 and not {q.text for q in train} & {q.text for q in val}
    assert len(train) + len(val) == len(seeds)
    assert any(q.harmful for q in val)


def test_gate_never_scores_compliance_on_harmful_queries() -> None:
    assert gate_aspects(["Compliance", "Helpfulness"], harmful=True) == ["Safety", "Helpfulness"]
    assert "Compliance" in gate_aspects(["Compliance", "Clarity"], harmful=False)
    assert len(gate_aspects(list(ASPECTS), harmful=True)) == 5
    assert len(gate_aspects([], harmful=False)) >= 2


def test_cache_keys_exclude_credentials_but_include_the_request() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    a = Endpoint("judge", "http://h/v1", "m", api_key="sk-one")
    b = Endpoint("judge", "http://h/v1", "m", api_key="sk-two")
    assert request_key(a, "chat", body) == request_key(b, "chat", body)
    assert request_key(a, "chat", body) != request_key(a, "chat", {**body, "temperature": 0.5})
    assert request_key(a, "chat", body) != request_key(Endpoint("judge", "http://other/v1", "m"), "chat", body)


def test_dry_run_starts_and_calls_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drpo_home: Path) -> None:
    import drpo.embedded

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("dry run must not start a backend")

    monkeypatch.setattr(drpo.embedded.EmbeddedBackend, "start", boom)
    monkeypatch.setattr("optimizer.openai_transport.OpenAITransport.create", boom)
    result = CliRunner().invoke(app, ["optimize", "--model", "smollm2-135m-instruct", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "projected" in result.output and "calls" in result.output
    assert not (drpo_home / "runs").exists()


def test_help_documents_the_flags() -> None:
    result = CliRunner().invoke(app, ["optimize", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--beam", "--actions", "--depth", "--max-depth-increase", "--resume", "--dry-run", "--json-dialect"):
        assert flag in result.output
