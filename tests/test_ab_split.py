"""A/B splits between prompt versions: the store, sticky assignment, the proxy, the CLI."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from drpo.cli import app
from prompts.artifact import Artifact
from prompts.config import get_settings
from prompts.errors import ArtifactNotFound, PromptsError
from prompts.layout import PreparedArtifact
from prompts.store import PromptStore
from proxy.snapshot import Split
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy

MODEL = "fake-model"
# The proxy sees a store change on its next snapshot poll, which a loaded machine can delay a lot; the
# wait loops stop as soon as the change shows, so a generous bound costs nothing when things are fast.
RELOAD_WAIT = 30.0


@pytest.fixture
def two(tmp_path: Path) -> tuple[Artifact, Artifact]:
    a, b = make_artifact(MODEL, "Prompt A"), make_artifact(MODEL, "Prompt B")
    with PromptStore(tmp_path / "store") as store:
        store.put(a)
        store.put(b, activate=True)
    return a, b


def test_the_store_keeps_a_validated_split_and_a_change_is_audited(
    tmp_path: Path, two: tuple[Artifact, Artifact]
) -> None:
    a, b = two
    with PromptStore(tmp_path / "store", actor="cli:test") as store:
        before = store.generation()
        assert store.set_split(MODEL, {a.version[:6]: 90, b.version: 10}) == {a.version: 90, b.version: 10}
        assert store.split(MODEL) == {a.version: 90, b.version: 10} and store.generation() == before + 1
        assert {(w, art.version) for w, art in store.active_splits()[MODEL]} == {(90, a.version), (10, b.version)}
        with pytest.raises(ArtifactNotFound):
            store.set_split(MODEL, {"zzzz": 1})
        with pytest.raises(PromptsError, match="positive weight"):
            store.set_split(MODEL, {a.version: 0})
        store.clear_split(MODEL)
        assert store.split(MODEL) is None and store.active_splits() == {}
        assert [e["action"].split(" ")[0] for e in store.audit_log(MODEL)] == ["split", "split"]


def test_assignment_is_sticky_per_key_and_follows_the_weights() -> None:
    a = PreparedArtifact.build(make_artifact(MODEL, "Prompt A"))
    b = PreparedArtifact.build(make_artifact(MODEL, "Prompt B"))
    split = Split(MODEL, [(90, a), (10, b)])
    picks = Counter(split.pick(f"user-{i}").artifact.system_prompt for i in range(4000))
    assert 0.07 < picks["Prompt B"] / 4000 < 0.13, picks
    assert all(split.pick(f"user-{i}") is split.pick(f"user-{i}") for i in range(200))
    random_picks = Counter(split.pick(None).artifact.system_prompt for _ in range(4000))
    assert 0.07 < random_picks["Prompt B"] / 4000 < 0.13, random_picks


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=(MODEL,)) as fake:
        yield fake


def _version(base: str, user: str | None = None, session: str | None = None) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **({"user": user} if user else {})}
    headers = {"x-drpo-session": session} if session else {}
    response = httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert response.status_code == 200
    return response.headers["x-drpo-prompt-version"]


def test_the_proxy_serves_a_split_sticky_per_user_and_hot_swaps_it(
    backend: FakeBackend, tmp_path: Path, two: tuple[Artifact, Artifact]
) -> None:
    a, b = two
    settings = make_settings(tmp_path, backend.url)
    with running_proxy(settings) as base:
        assert _version(base, "u1") == b.version  # no split: the active version
        with PromptStore(settings.store_dir) as store:
            store.set_split(MODEL, {a.version: 50, b.version: 50})
        deadline = time.monotonic() + RELOAD_WAIT
        while len({_version(base, f"u{i}") for i in range(20)}) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        users = {f"u{i}": _version(base, f"u{i}") for i in range(40)}
        assert set(users.values()) == {a.version, b.version}
        assert all(_version(base, user) == version for user, version in users.items())  # sticky
        sessions = {_version(base, session=f"s{i}") for i in range(40)}
        assert sessions == {a.version, b.version}
        assert _version(base, session="s7") == _version(base, session="s7")
        with PromptStore(settings.store_dir) as store:
            store.clear_split(MODEL)
        deadline = time.monotonic() + RELOAD_WAIT
        while {_version(base, f"u{i}") for i in range(20)} != {b.version} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {_version(base, f"u{i}") for i in range(20)} == {b.version}


def test_cli_split_and_clear(drpo_home: Path) -> None:
    a, b = make_artifact(MODEL, "Prompt A"), make_artifact(MODEL, "Prompt B")
    with PromptStore(get_settings().store_dir) as store:
        store.put(a)
        store.put(b, activate=True)
    runner = CliRunner()
    done = runner.invoke(app, ["prompts", "split", MODEL, f"{a.version[:7]}=90", f"{b.version}=10"])
    assert done.exit_code == 0 and done.stdout.strip() == f"{MODEL}: split {a.version} 90%, {b.version} 10%"
    listed = runner.invoke(app, ["prompts", "list"]).stdout.splitlines()
    assert listed[1] == f"{MODEL}  {b.version}  split {a.version}=90 {b.version}=10"
    bad = runner.invoke(app, ["prompts", "split", MODEL, "x=0"])
    assert bad.exit_code == 1
    cleared = runner.invoke(app, ["prompts", "split", MODEL, "--clear"])
    assert cleared.exit_code == 0 and f"serving {b.version}" in cleared.stdout


def test_a_split_in_the_config_file_is_applied_at_start_and_audited(
    tmp_path: Path, two: tuple[Artifact, Artifact]
) -> None:
    import typer

    from drpo.cli_serve import apply_config_splits
    from prompts.config import FileConfig

    a, b = two
    config = FileConfig.model_validate({"models": {MODEL: {"split": {a.version[:8]: 3, b.version: 1}}}})
    with PromptStore(tmp_path / "store") as store:
        apply_config_splits(store, config)
        apply_config_splits(store, config)  # unchanged: not written again
        assert store.split(MODEL) == {a.version: 3, b.version: 1}
        assert [(e["actor"], e["action"].split()[0]) for e in store.audit_log(MODEL)] == [("config", "split")]
        with pytest.raises(typer.Exit):
            apply_config_splits(store, FileConfig.model_validate({"models": {MODEL: {"split": {"zzzz": 1}}}}))
    with pytest.raises(ValueError, match="positive weight"):
        FileConfig.model_validate({"models": {MODEL: {"split": {a.version: 0}}}})
