"""The versioned artifact store: versions, activation, rollback, import/export, atomicity."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import diskcache
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompts.artifact import Artifact, Example, Provenance
from prompts.errors import ArtifactNotFound, InvalidArtifact, NothingToRollBack, PromptsError
from prompts.store import PromptStore, write_atomic
from tests.legacy_store import old_history, reference_rollback, write_old_layout

REPO = Path(__file__).resolve().parents[1]


def _artifact(prompt: str = "Be helpful.", model: str = "m", **provenance: object) -> Artifact:
    return Artifact(
        model=model,
        system_prompt=prompt,
        examples=(Example(query="How do I list files?", answer="Use ls."),),
        provenance=Provenance(**provenance),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PromptStore]:
    with PromptStore(tmp_path / "store") as opened:
        yield opened


def test_put_and_get(store: PromptStore) -> None:
    a = _artifact()
    assert store.put(a) == a
    assert store.get("m", a.version) == a
    assert store.models() == ["m"]
    assert store.active_version("m") is None
    with pytest.raises(ArtifactNotFound, match="no active"):
        store.get("m")
    store.put(a, activate=True)
    assert store.get("m") == a


def test_put_is_idempotent(store: PromptStore) -> None:
    a = _artifact()
    store.put(a)
    first = store.versions("m")
    store.put(_artifact(method="import"))  # same content, other provenance: same version
    assert store.versions("m") == first
    assert len(first) == 1
    # The first stored copy wins: versions are immutable.
    assert store.get("m", a.version).provenance.method == "manual"


def test_versions_lists_in_insertion_order_with_metadata(store: PromptStore) -> None:
    a = store.put(_artifact("A", method="optimize", scores={"val": 4.25}))
    b = store.put(_artifact("B"))
    store.activate("m", b.version)
    infos = store.versions("m")
    assert [i.version for i in infos] == [a.version, b.version]
    assert [i.active for i in infos] == [False, True]
    assert infos[0].method == "optimize" and infos[0].scores == {"val": 4.25}
    assert infos[0].created_at == a.provenance.created_at.isoformat()
    assert infos[0].added_at <= infos[1].added_at
    assert store.versions("unknown") == []


def test_models_sorted_and_separate(store: PromptStore) -> None:
    store.put(_artifact(model="zeta"), activate=True)
    store.put(_artifact(model="alpha"))
    assert store.models() == ["alpha", "zeta"]
    assert set(store.active_artifacts()) == {"zeta"}
    with pytest.raises(ArtifactNotFound):
        store.activate("alpha", store.active_version("zeta") or "")


def test_prefix_resolution(store: PromptStore) -> None:
    a = store.put(_artifact("A"))
    assert store.get("m", a.version[:4]) == a
    assert store.activate("m", a.version[:6]) == a.version
    # Find a second artifact whose version shares the first character with a's.
    for n in itertools.count():
        b = _artifact(f"B{n}")
        if b.version[0] == a.version[0]:
            break
    store.put(b)
    with pytest.raises(ArtifactNotFound, match="ambiguous"):
        store.get("m", a.version[0])
    with pytest.raises(ArtifactNotFound, match="no version"):
        store.get("m", "zzzz")
    with pytest.raises(ArtifactNotFound):
        store.get("other-model", a.version)


def test_activate_history_and_generation(store: PromptStore) -> None:
    a, b = store.put(_artifact("A")), store.put(_artifact("B"))
    g0 = store.generation()
    store.activate("m", a.version)
    store.activate("m", b.version)
    assert store.generation() == g0 + 2
    assert [(h["version"], h["action"]) for h in store.history("m")] == [
        (a.version, "activate"),
        (b.version, "activate"),
    ]
    with pytest.raises(ArtifactNotFound):
        store.activate("m", "ffffffffffff")
    assert store.active_version("m") == b.version


def test_rollback_walks_back(store: PromptStore) -> None:
    a, b, c = (store.put(_artifact(p)) for p in "ABC")
    for artifact in (a, b, c):
        store.activate("m", artifact.version)
    assert store.rollback("m") == b.version
    assert store.get("m") == b
    assert store.rollback("m") == a.version
    with pytest.raises(NothingToRollBack):
        store.rollback("m")
    assert store.active_version("m") == a.version
    # Activating again after rollbacks starts a new stack on top of a.
    store.activate("m", c.version)
    assert store.rollback("m") == a.version
    assert store.history("m")[-1]["action"] == "rollback"


def test_rollback_errors(store: PromptStore) -> None:
    with pytest.raises(NothingToRollBack):
        store.rollback("m")
    a = store.put(_artifact(), activate=True)
    with pytest.raises(NothingToRollBack):
        store.rollback("m")
    store.activate("m", a.version)  # re-activating the same version is not a step back
    with pytest.raises(NothingToRollBack):
        store.rollback("m")


def test_deactivate(store: PromptStore) -> None:
    a = store.put(_artifact(), activate=True)
    g = store.generation()
    store.deactivate("m")
    assert store.active_version("m") is None
    assert store.active_artifacts() == {}
    assert store.generation() == g + 1
    assert store.get("m", a.version) == a


def test_persists_as_json_across_reopen(tmp_path: Path) -> None:
    with PromptStore(tmp_path / "s") as first:
        a = first.put(_artifact(), activate=True)
    with PromptStore(tmp_path / "s") as second:
        assert second.get("m") == a
    with diskcache.Cache(str(tmp_path / "s")) as raw:
        stored = raw.get(json.dumps(["artifact", "m", a.version], separators=(",", ":")))
        keys = list(raw)
    assert isinstance(stored, bytes)
    assert orjson.loads(stored)["version"] == a.version
    # Every key is a plain string (diskcache would pickle anything else) and no value is a file.
    assert all(isinstance(k, str) for k in keys)
    assert not [p for p in (tmp_path / "s").rglob("*.val")]


def test_export_import_round_trip(store: PromptStore, tmp_path: Path) -> None:
    a = store.put(_artifact(method="optimize", scores={"val": 4.0}), activate=True)
    path = tmp_path / "out" / "a.json"
    store.export("m", path)
    with PromptStore(tmp_path / "other") as other:
        imported = other.import_file(path, activate=True)
        assert imported == a
        assert other.get("m") == a
    # An edited export imports as a new version of the same model.
    data = json.loads(path.read_text())
    data["system_prompt"] = "Be extremely helpful."
    path.write_text(json.dumps(data))
    edited = store.import_file(path)
    assert edited.version != a.version and edited.version != data["version"]
    assert [i.version for i in store.versions("m")] == [a.version, edited.version]
    assert store.active_version("m") == a.version


def test_export_specific_version(store: PromptStore, tmp_path: Path) -> None:
    a = store.put(_artifact("A"))
    store.put(_artifact("B"), activate=True)
    store.export("m", tmp_path / "a.json", version=a.version[:5])
    assert Artifact.from_json((tmp_path / "a.json").read_bytes()) == a
    with pytest.raises(ArtifactNotFound):
        store.export("nobody", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "m"}', "not a valid artifact"),
        (b'{"model": "m", "system_prompt": "x", "schema_version": 99}', "newer"),
        (b"[]", "not a valid artifact"),
    ],
)
def test_import_invalid(store: PromptStore, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidArtifact, match=message):
        store.import_file(path)
    assert store.models() == []


def test_import_missing_file(store: PromptStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact, match="cannot read"):
        store.import_file(tmp_path / "missing.json")


def test_write_atomic_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.json"
    write_atomic(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(path, b"new content")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_atomic_readers_see_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    contents = [b"A" * 200_000, b"B" * 300_000]
    write_atomic(path, contents[0])
    stop = threading.Event()
    seen: set[bytes] = set()

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(60):
            write_atomic(path, contents[n % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= set(contents)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


# -- cross-process atomicity ----------------------------------------------------

_READER = r"""
import json, sys, time
from pathlib import Path
from prompts.store import PromptStore

store_dir, stop_file, ready_file, expected_file = map(Path, sys.argv[1:5])
expected = set(json.loads(expected_file.read_text()))
errors, reads, generations = [], 0, []
with PromptStore(store_dir) as store:
    while True:
        try:
            gen = store.generation()
            if generations and gen < generations[-1]:
                errors.append(f"generation went back: {generations[-1]} -> {gen}")
            generations.append(gen)
            for model, artifact in store.active_artifacts().items():
                if artifact.version not in expected:
                    errors.append(f"unknown version {artifact.version}")
            version = store.active_version("m")
            if version is not None:
                artifact = store.get("m", version)
                if artifact.version != version or artifact.model != "m":
                    errors.append(f"asked for {version}, got {artifact.version}")
            artifact = store.get("m")
            if len(artifact.examples) != int(artifact.system_prompt.split()[-1]):
                errors.append("examples do not match their prompt")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        reads += 1
        if reads == 1:
            ready_file.write_text("ready")
        if stop_file.exists() or len(errors) > 20:
            break
print(json.dumps({"reads": reads, "errors": errors[:20], "generations": len(set(generations))}))
"""


def _sized_artifact(n: int) -> Artifact:
    # Some artifacts are large enough that diskcache stores them as separate files.
    examples = tuple(Example(query=f"question {i} of {n}", answer="x" * 1500) for i in range(n))
    return Artifact(model="m", system_prompt=f"Prompt with examples {n}", examples=examples)


def test_reader_process_never_sees_partial_state(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    artifacts = [_sized_artifact(n) for n in range(1, 41)]
    stop_file, ready_file, expected_file = tmp_path / "stop", tmp_path / "ready", tmp_path / "expected.json"
    expected_file.write_text(json.dumps([a.version for a in artifacts]))
    with PromptStore(store_dir) as writer:
        writer.put(artifacts[0], activate=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(store_dir), str(stop_file), str(ready_file), str(expected_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while not ready_file.exists():
                assert reader.poll() is None, reader.stderr.read() if reader.stderr else ""
                assert time.monotonic() < deadline, "reader did not start"
                time.sleep(0.05)
            # New versions arrive already active (put + activate in one transaction),
            # then the writer flips between them and rolls back.
            for artifact in artifacts[1:]:
                writer.put(artifact, activate=True)
            for n in range(100):
                writer.activate("m", artifacts[n % len(artifacts)].version)
                if n % 10 == 9:
                    writer.rollback("m")
        finally:
            stop_file.write_text("stop")
            out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["errors"] == []
    assert result["reads"] > 1


# -- never evicts ---------------------------------------------------------------


def test_store_settings_disable_eviction_and_value_files(store: PromptStore) -> None:
    with diskcache.Cache(str(store.directory)) as raw:  # reads the settings the store persisted
        assert raw.eviction_policy == "none"
        assert raw.cull_limit == 0
        assert raw.disk_min_file_size >= 2**30


def test_writing_past_the_size_limit_keeps_every_version(tmp_path: Path) -> None:
    # diskcache's default size limit is 1 GiB; a store created with a small one (diskcache
    # keeps settings in the database) shows the same culling without writing a gigabyte.
    directory = tmp_path / "store"
    diskcache.Cache(str(directory), size_limit=100_000).close()
    written = []
    with PromptStore(directory) as store:
        for n in range(120):  # ~1 MB of artifacts: ten times the limit
            artifact = Artifact(
                model="m",
                system_prompt=f"Prompt {n}",
                examples=(Example(query=f"q{n}", answer="a" * 8000),),
            )
            written.append(store.put(artifact, activate=n % 10 == 0))
    with PromptStore(directory) as store:
        assert [i.version for i in store.versions("m")] == [a.version for a in written]
        assert all(store.get("m", a.version) == a for a in written)
        assert len(store.history("m")) == 12


# -- rollback keeps the stack semantics ---------------------------------------------


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("activate"), st.integers(0, 3)),
        st.tuples(st.just("put-activate"), st.integers(0, 3)),
        st.tuples(st.just("rollback"), st.just(0)),
        st.tuples(st.just("deactivate"), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_rollback_matches_replaying_the_history(operations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory, PromptStore(directory) as store:
        artifacts = [store.put(_artifact(p)) for p in "ABCD"]
        history: list[tuple[str, str]] = []
        active: str | None = None
        for name, n in operations:
            version = artifacts[n].version
            if name == "activate":
                store.activate("m", version)
                history.append((version, "activate"))
                active = version
            elif name == "put-activate":
                store.put(artifacts[n], activate=True)
                history.append((version, "activate"))
                active = version
            elif name == "deactivate":
                store.deactivate("m")
                active = None
            else:
                expected = reference_rollback(history, active)
                if expected is None:
                    with pytest.raises(NothingToRollBack):
                        store.rollback("m")
                else:
                    assert store.rollback("m") == expected
                    history.append((expected, "rollback"))
                    active = expected
            assert store.active_version("m") == active
            assert [(h["version"], h["action"]) for h in store.history("m")] == history


# -- migration from the first layout ----------------------------------------------------


def test_opening_an_old_store_migrates_everything(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    artifacts = [_artifact(f"Prompt {n}", method="optimize", scores={"val": n / 4}) for n in range(600)]
    versions = [a.version for a in artifacts]
    history, active = old_history(versions, 500)
    write_old_layout(directory, artifacts, history, active)
    assert list(directory.rglob("*.val")), "the old lists should be big enough to be files"

    with PromptStore(directory) as store:
        assert store.models() == ["m"]
        infos = store.versions("m")
        assert [i.version for i in infos] == versions
        assert infos[7].added_at == "2024-01-01T00:00:000007Z"
        assert (infos[7].method, infos[7].scores) == ("optimize", {"val": 7 / 4})
        assert [i.version for i in infos if i.active] == [active]
        assert [(h["version"], h["action"]) for h in store.history("m")] == history
        assert store.history("m")[3]["at"] == "2024-02-01T000003"
        assert store.generation() == len(history) + 3
        assert store.get("m", versions[42][:10]) == artifacts[42]
        assert store.get("m") == artifacts[versions.index(active)]
        # Rollbacks continue the old stack exactly.
        for _ in range(5):
            expected = reference_rollback(history, active)
            assert expected is not None
            assert store.rollback("m") == expected
            history.append((expected, "rollback"))
            active = expected
    with diskcache.Cache(str(directory)) as raw:
        keys = list(raw)
        assert raw.get(json.dumps(["schema"])) == 2
    assert all(isinstance(k, str) for k in keys), "the old pickled keys are gone"
    assert not list(directory.rglob("*.val")), "every value is inline now"
    with PromptStore(directory) as reopened:  # a second open finds nothing to migrate
        assert len(reopened.versions("m")) == 600


def test_migration_recovers_versions_of_a_damaged_old_store(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    artifacts = [_artifact(f"Prompt {n}") for n in range(600)]
    write_old_layout(directory, artifacts, [(artifacts[1].version, "activate")], artifacts[1].version)
    files = list(directory.rglob("*.val"))
    assert len(files) == 1  # the version list
    files[0].unlink()  # what the old bug left behind: a row pointing at a missing file
    with PromptStore(directory) as store:
        infos = store.versions("m")
        assert [i.version for i in infos] == [a.version for a in artifacts]  # in order of creation
        assert store.get("m") == artifacts[1]


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    with PromptStore(tmp_path / "s"):
        pass
    with diskcache.Cache(str(tmp_path / "s")) as raw:
        raw.set(json.dumps(["schema"]), 99)
    with pytest.raises(PromptsError, match="newer"):
        PromptStore(tmp_path / "s")


def test_refresh_runs_move_from_in_progress_to_the_log(tmp_path: Path) -> None:
    with PromptStore(tmp_path / "store") as store:
        assert store.refresh_runs("m") == [] and store.last_refresh("m") is None
        started = store.begin_refresh("m", trigger="schedule")
        with pytest.raises(PromptsError, match="already in progress"):
            store.begin_refresh("m")
        store.update_refresh("m", optimizer_run="run-1")
        assert store.current_refresh("m") == {**started, "optimizer_run": "run-1"}
        done = store.finish_refresh("m", "promoted", candidate="abc")
        assert done["outcome"] == "promoted" and done["ended_at"] and done["optimizer_run"] == "run-1"
        assert store.current_refresh("m") is None
        second = store.begin_refresh("m")
        runs = store.refresh_runs("m")
        assert [r["id"] for r in runs] == [second["id"], started["id"]]
        store.finish_refresh("m", "failed")
        assert [r["outcome"] for r in store.refresh_runs("m", limit=1)] == ["failed"]
        third = store.begin_refresh("m")
        assert store.last_refresh("m") == third
        assert store.refresh_models() == ["m"]
        with pytest.raises(PromptsError, match="no refresh"):
            store.update_refresh("other", x=1)
