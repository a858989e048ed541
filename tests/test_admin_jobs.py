"""Admin API actions that run as background jobs: promote through the gate (or forced), refresh now,
job status, refresh runs; and the model list's candidates and last refresh."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from prompts.artifact import Artifact
from prompts.store import PromptStore
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy
from tests.fakes_llm import FakeOpenAIServer
from tests.test_worker import MARKER, MODEL, TINY, obedient_model

ADMIN = {"authorization": "Bearer admin-secret"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency=0.0, model=MODEL, reply=obedient_model) as server:
        yield server


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Artifact, Artifact, Artifact]:
    live = make_artifact(MODEL, "Answer briefly.")
    better = make_artifact(MODEL, MARKER)
    plain = make_artifact(MODEL, "Answer at length.")
    with PromptStore(tmp_path / "store") as store:
        store.put(live, activate=True)
        store.put(better)
        store.put(plain)
    return live, better, plain


def _settings(tmp_path: Path, backend_url: str) -> Any:
    return make_settings(tmp_path, backend_url, admin_key=SecretStr("admin-secret"), admin_key_name="ops")


def _finished_job(base: str, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{base}/admin/jobs/{job['id']}", headers=ADMIN).json()
        if state["status"] != "running":
            return dict(state)
        time.sleep(0.2)
    raise AssertionError(f"job {job['id']} did not finish")


def _served_version_becomes(base: str, version: str, timeout: float = 20.0) -> str:
    """The prompt version chat requests are served with, asked until it is ``version`` or the time is up."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(base + "/v1/chat/completions", json=chat, timeout=30)
        assert response.status_code == 200, response.text
        served = response.headers["x-drpo-prompt-version"]
        if served == version or time.monotonic() > deadline:
            return served
        time.sleep(0.1)


def test_promote_runs_the_gate_as_a_job_and_force_skips_it(
    tmp_path: Path, fake: FakeOpenAIServer, versions: tuple[Artifact, Artifact, Artifact]
) -> None:
    _live, better, plain = versions
    with running_proxy(_settings(tmp_path, fake.base_url)) as base:
        models = httpx.get(base + "/admin/models", headers=ADMIN).json()
        assert models[1]["candidates"] == [plain.version, better.version] and models[1]["refresh"] is None

        # No better than the live one: the job succeeds with the gate's verdict, nothing changes.
        started = httpx.post(
            base + "/admin/promote", params={"model": MODEL}, json={"version": plain.version[:8]}, headers=ADMIN
        )
        assert started.status_code == 202 and started.headers["location"] == f"jobs/{started.json()['id']}"
        job = _finished_job(base, started.json())
        assert job["status"] == "succeeded" and job["exit_code"] == 4 and job["version"] == plain.version
        assert job["outcome"].startswith(f"kept {plain.version} as candidate")

        # Better on the labelled prompts: promoted, on record as the admin key's name.
        started = httpx.post(
            base + "/admin/promote", params={"model": MODEL}, json={"version": better.version}, headers=ADMIN
        )
        job = _finished_job(base, started.json())
        assert job["status"] == "succeeded" and job["exit_code"] == 0, job["output"]
        assert job["outcome"].startswith(f"promoted {better.version}")
        assert next(j["id"] for j in httpx.get(base + "/admin/jobs", headers=ADMIN).json()) == job["id"]

        forced = httpx.post(
            base + "/admin/promote",
            params={"model": MODEL},
            json={"version": plain.version, "force": True},
            headers=ADMIN,
        )
        assert forced.status_code == 200
        assert forced.json() == {"model": MODEL, "active": plain.version, "previous": better.version}
        assert httpx.get(base + "/admin/jobs/nope", headers=ADMIN).status_code == 404
        unknown = httpx.post(base + "/admin/promote", params={"model": MODEL}, json={"version": "0000"}, headers=ADMIN)
        assert unknown.status_code == 404
    with PromptStore(tmp_path / "store") as store:
        audit = [(e["actor"], e["action"], e["version"]) for e in store.audit_log(MODEL)]
        reports = store.eval_reports(MODEL)
    assert ("admin:ops", "promote", better.version) in audit
    assert ("admin:ops", "promote --force", plain.version) in audit
    assert [r["gate"]["promote"] for r in reports] == [False, True]


def test_refresh_now_runs_the_worker_as_a_job_and_lists_its_run(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"refresh": {MODEL: {"optimize": TINY, "gate": {"margin": 0.0, "max_tokens": 16}}}}),
        encoding="utf-8",
    )
    settings = _settings(tmp_path, fake.base_url).model_copy(update={"config": config})
    with running_proxy(settings) as base:
        started = httpx.post(base + "/admin/refresh", params={"model": MODEL}, headers=ADMIN)
        assert started.status_code == 202
        again = httpx.post(base + "/admin/refresh", params={"model": MODEL}, headers=ADMIN)
        assert again.status_code == 409 and "already running" in again.json()["error"]["message"]
        job = _finished_job(base, started.json(), timeout=240)
        assert job["status"] == "succeeded" and job["outcome"].startswith("promoted "), job["output"]
        runs = httpx.get(base + "/admin/refresh-runs", params={"model": MODEL}, headers=ADMIN).json()
        assert len(runs) == 1 and runs[0]["outcome"] == "promoted" and runs[0]["trigger"] == "manual"
        assert runs[0]["calls"] > 0 and runs[0]["candidate"] == job["outcome"].split()[1]
        models = httpx.get(base + "/admin/models", headers=ADMIN).json()
        assert models[1]["active"] == runs[0]["candidate"] and models[1]["refresh"]["id"] == runs[0]["id"]
        assert httpx.get(base + "/admin/refresh-runs", headers=ADMIN).json() == runs
        # The served version changes without a restart, once the proxy's next snapshot poll sees the store.
        assert _served_version_becomes(base, runs[0]["candidate"]) == runs[0]["candidate"]
