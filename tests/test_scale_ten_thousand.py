"""The CLI and the proxy on a store with 10,000 versions and 10,000 activations of one model (what
a long-running refresh worker reaches): listing, rollback, the proxy's start-up snapshot, serving,
the admin API. Correctness only; the speed of each operation is measured in bench/store_scale.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from drpo.cli_prompts import ACTIVE_MARK
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_settings, running_proxy
from tests.test_store_crash import MODEL, _artifact

COUNT = 10_000
ADMIN = {"authorization": "Bearer admin-secret"}


@pytest.fixture(scope="module")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    home = tmp_path_factory.mktemp("ten-thousand")
    with PromptStore(home / "store") as store:
        versions = [store.put(_artifact(n)).version for n in range(COUNT)]
        for n in range(COUNT):
            store.activate(MODEL, versions[(n * 7919) % COUNT])
    return home, versions


def _drpo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRPO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "drpo", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_lists_and_rolls_back_ten_thousand_versions(big_home: tuple[Path, list[str]]) -> None:
    home, versions = big_home
    active = versions[((COUNT - 1) * 7919) % COUNT]
    listed = _drpo(home, "prompts", "list", MODEL, "--versions")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == COUNT
    assert [line.split()[0] for line in lines] == versions
    marked = [line for line in lines if line.endswith(ACTIVE_MARK)]
    assert len(marked) == 1 and active in marked[0]
    models = _drpo(home, "prompts", "list")
    assert models.returncode == 0 and MODEL in models.stdout
    rolled = _drpo(home, "prompts", "rollback", MODEL)
    assert rolled.returncode == 0, rolled.stderr
    previous = versions[((COUNT - 2) * 7919) % COUNT]
    assert previous in rolled.stdout
    with PromptStore(home / "store") as store:
        assert store.active_version(MODEL) == previous
        store.activate(MODEL, active)  # leave the store as the other test expects it


def test_the_proxy_starts_serves_and_rolls_back_on_ten_thousand_versions(
    big_home: tuple[Path, list[str]],
) -> None:
    home, versions = big_home
    with FakeBackend(models=(MODEL,)) as backend:
        settings = make_settings(home, backend.url, admin_key=SecretStr("admin-secret"))
        with running_proxy(settings) as base:
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "question 17"}]}
            served = httpx.post(base + "/v1/chat/completions", json=chat)
            active = served.headers["x-drpo-prompt-version"]
            assert served.status_code == 200 and active == versions[((COUNT - 1) * 7919) % COUNT]
            models = httpx.get(base + "/admin/models", headers=ADMIN).json()
            assert models[1]["versions"] == COUNT and models[1]["active"] == active
            assert len(models[1]["candidates"]) == 5
            listed = httpx.get(base + "/admin/versions", params={"model": MODEL}, headers=ADMIN).json()
            assert len(listed) == COUNT and [v["version"] for v in listed if v["active"]] == [active]
            rolled = httpx.post(base + "/admin/rollback", params={"model": MODEL}, headers=ADMIN).json()
            assert rolled["previous"] == active and rolled["active"] == versions[((COUNT - 2) * 7919) % COUNT]
            for _ in range(100):
                if (
                    httpx.post(base + "/v1/chat/completions", json=chat).headers["x-drpo-prompt-version"]
                    == (rolled["active"])
                ):
                    break
            else:
                raise AssertionError("the proxy never served the rolled-back version")
