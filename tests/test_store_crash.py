"""The store survives a crash at every write step and concurrent readers, at real sizes.

A version list or activation history of 32 KiB or more used to be a separate diskcache
file that a rewrite deleted before its transaction committed: a kill in that window, or
a reader in another process, found the list gone. These tests use stores big enough to
cross that size (1,000+ versions and activations) and kill a real writer process after
every single write step (tests/store_crash_child.py does the killing and runs the CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import pytest

from prompts.artifact import Artifact, Example, Provenance
from prompts.store import PromptStore
from proxy.snapshot import ArtifactSnapshot
from tests.legacy_store import old_history, reference_rollback, write_old_layout

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("store_crash_child.py")
MODEL = "m"
VERSIONS = 1000
ACTIVATIONS = 1000


def _artifact(n: int, model: str = MODEL) -> Artifact:
    return Artifact(
        model=model,
        system_prompt=f"Prompt number {n}.",
        examples=(Example(query=f"question {n}", answer=f"answer {n}"),),
        provenance=Provenance(method="optimize", scores={"val": n / 8}),
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _child(*args: str, timeout: float = 300) -> Any:
    done = subprocess.run(
        [sys.executable, str(CHILD), *args], capture_output=True, text=True, env=_env(), timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DRPO_HOME whose store has 1,000 versions and 1,000+ activations of one model."""
    home = tmp_path_factory.mktemp("big") / "home"
    with PromptStore(home / "store") as store:
        artifacts = [store.put(_artifact(n)) for n in range(VERSIONS)]
        store.put(_artifact(0, model="other"), activate=True)
        for n in range(ACTIVATIONS):
            store.activate(MODEL, artifacts[(n * 7) % VERSIONS].version)
            if n % 100 == 99:
                store.rollback(MODEL)
    return home


@dataclass(frozen=True)
class State:
    models: tuple[str, ...]
    versions: tuple[str, ...]
    history: tuple[tuple[str, str], ...]
    active: str | None
    generation: int


def _read_state(store: PromptStore) -> State:
    return State(
        models=tuple(store.models()),
        versions=tuple(info.version for info in store.versions(MODEL)),
        history=tuple((h["version"], h["action"]) for h in store.history(MODEL)),
        active=store.active_version(MODEL),
        generation=store.generation(),
    )


def _state(home: Path) -> State:
    with PromptStore(home / "store") as store:
        return _read_state(store)


def _state_and_snapshot(home: Path) -> tuple[State, str]:
    """The state, and what `drpo serve` does at start-up: load every active artifact into memory."""
    with PromptStore(home / "store") as store:
        snapshot = ArtifactSnapshot(store, 1.0)
        snapshot.load_now()
        return _read_state(store), snapshot.get(MODEL).artifact.version


def _operation_argument(op: str, home: Path, tmp_path: Path) -> str:
    if op.startswith("import"):
        path = tmp_path / "new.json"
        path.write_bytes(_artifact(VERSIONS + 1).to_json())
        return str(path)
    if op == "activate":
        with PromptStore(home / "store") as store:
            candidates = [i.version for i in store.versions(MODEL) if not i.active]
        return candidates[len(candidates) // 2]
    return "-"


@pytest.mark.parametrize("op", ["import", "import-activate", "activate", "rollback"])
def test_kill_after_every_write_step_loses_nothing(op: str, big_home: Path, tmp_path: Path) -> None:
    arg = _operation_argument(op, big_home, tmp_path)
    result = _child("kill-loop", str(big_home), str(tmp_path / "work"), op, arg)
    assert "error" not in result, result
    killed = [Path(p) for p in result["killed"]]
    completed = Path(result["completed"])
    # One kill point after each write step of the operation, then a run that completes.
    assert len(killed) == len(result["steps"]) >= 3, result["steps"]

    before, after = _state(big_home), _state(completed)
    assert before != after
    assert len(before.versions) >= VERSIONS and len(before.history) >= ACTIVATIONS
    for number, home in enumerate(killed, 1):
        where = f"killed after step {number} ({result['steps'][number - 1]}) of {op}"
        state, served = _state_and_snapshot(home)
        assert set(before.versions) <= set(state.versions), where
        assert len(state.history) in (len(before.history), len(before.history) + 1), where
        assert state in (before, after), where
        assert served == state.active, where

    # Every command works on every crashed copy (rollback last: it changes the copy).
    homes = [*killed, completed]
    outcomes = _child("cli", *map(str, homes))
    for home in homes:
        for run in outcomes[str(home)]:
            assert run["exit"] == 0, (home.name, run)
    # And the installed console script itself (once: it costs a second of start-up), on the
    # copy killed just before the commit.
    drpo = Path(sys.executable).with_name("drpo")
    if op == "import-activate" and drpo.exists():
        env = {**_env(), "DRPO_HOME": str(killed[-2])}
        listed = subprocess.run(
            [str(drpo), "prompts", "list", MODEL, "--versions"], capture_output=True, text=True, env=env, check=False
        )
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == len(_state(killed[-2]).versions)


def test_reader_process_never_fails_during_thousands_of_imports(big_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(big_home, home)
    stop_file, ready_file = tmp_path / "stop", tmp_path / "ready"
    reader = subprocess.Popen(
        [sys.executable, str(CHILD), "read-loop", str(home), str(stop_file), str(ready_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    imports = 2000
    try:
        deadline = time.monotonic() + 60
        while not ready_file.exists():
            assert reader.poll() is None, reader.stderr.read() if reader.stderr else ""
            assert time.monotonic() < deadline, "reader did not start"
            time.sleep(0.05)
        with PromptStore(home / "store") as writer:
            for n in range(imports):
                writer.put(_artifact(10_000 + n), activate=True)
                if n % 50 == 49:
                    writer.rollback(MODEL)
    finally:
        stop_file.write_text("stop")
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert result["loads"] > 20 and result["versions_seen"] > 1, result
    assert len(_state(home).versions) == VERSIONS + imports


def test_ten_thousand_versions_and_activations(tmp_path: Path) -> None:
    """Correct at the size a refresh worker reaches (speed: bench/store_scale.py)."""
    count = 10_000
    with PromptStore(tmp_path / "store") as store:
        versions = [store.put(_artifact(n)).version for n in range(count)]
        for n in range(count):
            store.activate(MODEL, versions[(n * 7919) % count])
    with PromptStore(tmp_path / "store") as store:
        infos = store.versions(MODEL)
        assert [i.version for i in infos] == versions
        assert infos[1234].scores == {"val": 1234 / 8} and infos[1234].method == "optimize"
        history = store.history(MODEL)
        assert len(history) == count
        # Rollback walks back through the last activations, newest first.
        for back in range(1, 4):
            assert store.rollback(MODEL) == versions[((count - 1 - back) * 7919) % count]
        assert store.get(MODEL, versions[4321][:10]).version == versions[4321]
        snapshot = ArtifactSnapshot(store, 1.0)
        snapshot.load_now()
        assert snapshot.get(MODEL).artifact.version == store.active_version(MODEL)


def test_kill_during_migration_of_an_old_store_loses_nothing(tmp_path: Path) -> None:
    """Opening a store of the first layout migrates it; a crash at any step of that loses nothing."""
    source = tmp_path / "old-home"
    big = [_artifact(n).with_changes(examples=(Example(query=f"q{n}", answer="a" * 40_000),)) for n in range(3)]
    artifacts = [*big, *(_artifact(n) for n in range(3, 12))]
    versions = [a.version for a in artifacts]
    history, active = old_history(versions, 12)
    write_old_layout(source / "store", artifacts, history, active)
    assert len(list(source.rglob("*.val"))) == len(big), "large old values are files"

    result = _child("kill-loop", str(source), str(tmp_path / "work"), "migrate", "-", "15")
    assert "error" not in result, result
    steps = result["steps"]
    assert {"BEGIN IMMEDIATE", "COMMIT", "DELETE FROM Cache", "remove value file"} <= set(steps)
    for home in [*map(Path, result["killed"]), Path(result["completed"])]:
        where = f"{home.name} of {len(steps)} steps"
        with PromptStore(home / "store") as store:  # finishes the migration or its clean-up
            assert [i.version for i in store.versions(MODEL)] == versions, where
            assert [(h["version"], h["action"]) for h in store.history(MODEL)] == history, where
            assert store.active_version(MODEL) == active, where
            assert store.generation() == len(history) + 3, where
            assert all(store.get(MODEL, a.version) == a for a in big), where
            assert store.rollback(MODEL) == reference_rollback(history, active), where
        with diskcache.Cache(str(home / "store")) as raw:
            assert all(isinstance(k, str) for k in raw), where
        assert not list(home.rglob("*.val")), where
