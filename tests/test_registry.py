"""The shared registry on a real Redis: stores mirror it, proxy replicas follow it, outages lose nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from prompts.artifact import Artifact
from prompts.errors import RegistryUnavailable
from prompts.registry import PREFIX, Registry, decode, encode
from prompts.store import PromptStore
from prompts.store_layout import is_mirrored
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy
from tests.redis_server import Cable, RedisServer

MODEL = "fake-model"


@pytest.fixture
def registry(redis_server: RedisServer) -> Registry:
    return Registry.shared(redis_server.url)


def _store(tmp_path: Path, name: str, registry: Registry) -> PromptStore:
    return PromptStore(tmp_path / name, actor=f"test:{name}", registry=registry)


def _artifact(text: str) -> Artifact:
    return make_artifact(MODEL, text)


def _eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def _contents(store: PromptStore) -> dict[str, object]:
    cache = store.follower_cache()
    return {name: cache.get(name) for name in cache.iterkeys() if is_mirrored(name)}


def _registry_contents(registry: Registry) -> dict[str, object]:
    return {k.decode(): decode(v) for k, v in registry.client.hgetall(PREFIX + "data").items()}


def test_values_keep_their_type_through_redis() -> None:
    for value in (b'{"a": 1}', b"", 0, 42, "v1", "", None):
        assert decode(encode(value)) == value and type(decode(encode(value))) is type(value)
    with pytest.raises(TypeError):
        encode(True)


def test_every_kind_of_change_reaches_another_store(tmp_path: Path, registry: Registry) -> None:
    a, b = _store(tmp_path, "a", registry), _store(tmp_path, "b", registry)
    assert a.sync_registry() == "seeded"
    v1, v2 = _artifact("one"), _artifact("two")
    a.put(v1, activate=True)
    a.put(v2, activate=True)
    a.set_split(MODEL, {v1.version: 1, v2.version: 3})
    a.add_eval_report(MODEL, {"conditions": [{"version": v2.version}]})
    a.begin_refresh(MODEL, reason="test")
    assert b.sync_registry() in ("updated", "replaced")
    assert b.active_version(MODEL) == v2.version and b.split(MODEL) == {v1.version: 1, v2.version: 3}
    assert [r["id"] for r in b.eval_reports(MODEL, v2.version)] == [f"{MODEL}#1"]
    assert b.current_refresh(MODEL) is not None and b.generation() == a.generation()

    # The other replica changes it back: the rollback walks the same history, audited as its actor.
    b.clear_split(MODEL)
    b.finish_refresh(MODEL, "kept")
    assert b.rollback(MODEL) == v1.version
    assert a.sync_registry() == "updated"
    assert a.active_version(MODEL) == v1.version and a.split(MODEL) is None
    assert [r["outcome"] for r in a.refresh_runs(MODEL)] == ["kept"]
    assert [(e["actor"], e["action"]) for e in a.audit_log(MODEL)][-2:] == [
        ("test:b", "split cleared"),
        ("test:b", "rollback"),
    ]
    assert _contents(a) == _contents(b) == _registry_contents(registry)
    a.close()
    b.close()


def test_a_store_joining_adopts_the_registry_and_drops_its_own_history(tmp_path: Path, registry: Registry) -> None:
    with _store(tmp_path, "a", registry) as a:
        a.put(_artifact("shared"), activate=True)
    with PromptStore(tmp_path / "b") as lone:  # used alone before the registry was configured
        lone.put(_artifact("local only"), activate=True)
    with _store(tmp_path, "b", registry) as b:
        assert b.sync_registry() == "replaced"
        assert b.get(MODEL).system_prompt == "shared" and len(b.versions(MODEL)) == 1
        assert _contents(b) == _registry_contents(registry)


def test_concurrent_writers_on_two_replicas_lose_nothing(tmp_path: Path, registry: Registry) -> None:
    stores = [_store(tmp_path, name, registry) for name in ("a", "b")]
    errors: list[BaseException] = []

    def write(store: PromptStore, name: str) -> None:
        try:
            for i in range(15):
                store.put(_artifact(f"{name} {i}"), activate=True)
                store.add_eval_report(MODEL, {"by": name, "i": i})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, n)) for s, n in zip(stores, ("a", "b"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for store in stores:
        store.sync_registry()
        assert len(store.versions(MODEL)) == 30 and len(store.eval_reports(MODEL)) == 30
        assert len(store.history(MODEL)) == 30 and len(store.audit_log(MODEL)) == 60
    assert _contents(stores[0]) == _contents(stores[1]) == _registry_contents(registry)
    assert stores[0].active_version(MODEL) == stores[1].active_version(MODEL)
    for store in stores:
        store.close()


def test_a_change_is_refused_while_redis_is_down_and_nothing_diverges(
    tmp_path: Path, redis_server: RedisServer, registry: Registry
) -> None:
    a, b = _store(tmp_path, "a", registry), _store(tmp_path, "b", registry)
    v1 = a.put(_artifact("one"), activate=True)
    b.sync_registry()
    before = _contents(a)
    redis_server.stop()
    with pytest.raises(RegistryUnavailable, match="nothing was changed"):
        a.put(_artifact("two"), activate=True)
    assert _contents(a) == before and a.active_version(MODEL) == v1.version  # the local copy rolled back too

    redis_server.start()  # without persistence: an empty Redis
    assert a.sync_registry() == "seeded"  # the first copy back restores it, same id and revision
    assert b.sync_registry() == "current"
    v2 = b.put(_artifact("two"), activate=True)
    assert a.sync_registry() == "updated" and a.active_version(MODEL) == v2.version
    a.close()
    b.close()


def _served(base: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-drpo-prompt-version"]


def _registry_status(base: str) -> dict[str, object]:
    status: dict[str, object] = httpx.get(base + "/ready", timeout=10).json()["registry"]
    return status


def test_two_replicas_follow_promotions_through_an_outage(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url
    with (
        FakeBackend(models=(MODEL,)) as backend,
        running_proxy(make_settings(tmp_path / "r1", backend.url, registry_url=url)) as one,
        running_proxy(make_settings(tmp_path / "r2", backend.url, registry_url=url)) as two,
        PromptStore(tmp_path / "cli", actor="cli:test", registry=Registry.shared(url)) as cli,
    ):
        v1 = cli.put(_artifact("one"), activate=True)
        for base in (one, two):
            _eventually(lambda base=base: _served(base) == v1.version, "both replicas serve v1")
            assert _registry_status(base)["connected"] is True
        assert "drpo_registry_connected 1.0" in httpx.get(one + "/metrics").text

        redis_server.stop()
        for base in (one, two):
            _eventually(lambda base=base: _registry_status(base)["connected"] is False, "the outage is noticed")
            assert _served(base) == v1.version  # serving goes on from the local copy
        assert "drpo_registry_connected 0.0" in httpx.get(two + "/metrics").text
        with pytest.raises(RegistryUnavailable):
            cli.put(_artifact("two"), activate=True)

        redis_server.start()
        for base in (one, two):
            _eventually(lambda base=base: _registry_status(base)["connected"] is True, "they reconnect")
        v2 = cli.put(_artifact("two"), activate=True)
        for base in (one, two):
            _eventually(lambda base=base: _served(base) == v2.version, "both replicas serve v2")
        revisions = {_registry_status(base)["revision"] for base in (one, two)}
        assert revisions == {Registry.shared(url).head()[1]}


def test_a_version_published_while_a_replica_was_cut_off_reaches_it(tmp_path: Path, redis_server: RedisServer) -> None:
    cable = Cable(redis_server.port)
    cable.mend()
    with (
        FakeBackend(models=(MODEL,)) as backend,
        running_proxy(make_settings(tmp_path / "r1", backend.url, registry_url=redis_server.url)) as near,
        running_proxy(make_settings(tmp_path / "r2", backend.url, registry_url=cable.url)) as far,
        PromptStore(tmp_path / "cli", actor="cli:test", registry=Registry.shared(redis_server.url)) as cli,
    ):
        v1 = cli.put(_artifact("one"), activate=True)
        _eventually(lambda: _served(far) == v1.version, "the far replica serves v1")
        cable.cut()
        _eventually(lambda: _registry_status(far)["connected"] is False, "the far replica notices the cut")
        v2 = cli.put(_artifact("two"), activate=True)
        _eventually(lambda: _served(near) == v2.version, "the near replica serves v2")
        assert _served(far) == v1.version
        cable.mend()
        _eventually(lambda: _served(far) == v2.version, "the far replica catches up")
    cable.close()


def test_a_registry_url_must_be_redis() -> None:
    with pytest.raises(ValueError, match="redis://"):
        make_settings(Path("/nonexistent"), None, registry_url="http://example.com")
    with pytest.raises(ValueError, match="redis://"):
        Registry("localhost:6379")
    assert Registry("redis://user:secret@example.com:6380/2").location == "redis://example.com:6380/2"
    with pytest.raises(redis.RedisError):
        Registry("redis://127.0.0.1:1/0", timeout=0.2).head()


def test_a_replica_follows_a_registry_replaced_whole_even_at_the_same_generation(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    cable = Cable(redis_server.port)
    cable.mend()
    registry = Registry.shared(redis_server.url)
    with (
        FakeBackend(models=(MODEL,)) as backend,
        running_proxy(make_settings(tmp_path / "r", backend.url, registry_url=cable.url)) as replica,
        PromptStore(tmp_path / "cli", registry=registry) as cli,
        PromptStore(tmp_path / "other") as other,
    ):
        v1 = cli.put(_artifact("one"), activate=True)
        _eventually(lambda: _served(replica) == v1.version, "the replica serves v1")
        w = other.put(_artifact("from another deployment"), activate=True)
        assert other.generation() == cli.generation()
        cable.cut()
        registry.client.flushdb()
        other.registry = registry  # a store that never synced meets the empty registry first
        assert other.sync_registry() == "seeded"
        cable.mend()
        _eventually(lambda: _served(replica) == w.version, "the replica reloads the replaced copy")
    cable.close()


def test_open_store_takes_the_registry_from_the_environment_before_the_config_file(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prompts.config import FileConfig
    from prompts.store import open_store, registry_url

    settings = make_settings(tmp_path, None)
    assert registry_url(settings, FileConfig()) is None
    assert registry_url(settings, FileConfig(registry=redis_server.url)) == redis_server.url
    with pytest.raises(ValueError, match="redis://"):
        FileConfig(registry="http://example.com")
    monkeypatch.setenv("DRPO_REGISTRY_URL", redis_server.url)
    from_env = make_settings(tmp_path, None)
    assert registry_url(from_env, FileConfig(registry="redis://elsewhere:6379/0")) == redis_server.url
    with open_store(from_env, actor="cli:test") as store:
        assert store.registry is Registry.shared(redis_server.url)
        store.put(_artifact("one"), activate=True)
    assert _registry_contents(Registry.shared(redis_server.url))  # it went to Redis

    redis_server.stop()
    with open_store(from_env) as store:  # Redis down: reads this machine's copy, says so in the log
        assert store.get(MODEL).system_prompt == "one"


def test_the_cli_writes_through_the_registry_and_refuses_while_it_is_down(
    tmp_path: Path, redis_server: RedisServer, registry: Registry, drpo_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from drpo.cli import app
    from prompts.config import get_settings

    monkeypatch.setenv("DRPO_REGISTRY_URL", redis_server.url)
    get_settings.cache_clear()
    one, two = _artifact("one"), _artifact("two")
    for number, artifact in enumerate((one, two)):
        (tmp_path / f"{number}.json").write_bytes(artifact.to_json())
        result = CliRunner().invoke(app, ["prompts", "import", str(tmp_path / f"{number}.json"), "--activate"])
        assert result.exit_code == 0, result.output
    with _store(tmp_path, "replica", registry) as replica:
        replica.sync_registry()
        assert replica.active_version(MODEL) == two.version
        assert {e["actor"].split(":")[0] for e in replica.audit_log(MODEL)} == {"cli"}

    redis_server.stop()
    result = CliRunner().invoke(app, ["prompts", "rollback", MODEL])
    assert result.exit_code == 1 and "nothing was changed" in result.output
    listed = CliRunner().invoke(app, ["prompts", "list"])  # reading works from this machine's copy
    assert listed.exit_code == 0 and MODEL in listed.output


def test_the_admin_api_of_one_replica_changes_every_replica(tmp_path: Path, redis_server: RedisServer) -> None:
    from pydantic import SecretStr

    url, admin = redis_server.url, {"authorization": "Bearer admin-secret"}
    with (
        FakeBackend(models=(MODEL,)) as backend,
        running_proxy(
            make_settings(tmp_path / "r1", backend.url, registry_url=url, admin_key=SecretStr("admin-secret"))
        ) as one,
        running_proxy(make_settings(tmp_path / "r2", backend.url, registry_url=url)) as two,
        PromptStore(tmp_path / "cli", actor="cli:test", registry=Registry.shared(url)) as cli,
    ):
        v1 = cli.put(_artifact("one"), activate=True)
        v2 = cli.put(_artifact("two"))
        _eventually(lambda: _served(two) == v1.version, "the second replica serves v1")
        response = httpx.post(
            one + "/admin/activate", params={"model": MODEL}, json={"version": v2.version}, headers=admin
        )
        assert response.status_code == 200, response.text
        _eventually(lambda: _served(two) == v2.version, "the second replica serves what the first one's admin API set")
        cli.sync_registry()
        assert cli.audit_log(MODEL)[-1]["actor"] == "admin:admin"

        redis_server.stop()
        response = httpx.post(one + "/admin/rollback", params={"model": MODEL}, headers=admin, timeout=30)
        assert response.status_code == 503 and "nothing was changed" in response.json()["error"]["message"]
        assert _served(one) == _served(two) == v2.version
