"""The admin API under /admin: closed without DRPO_ADMIN_KEY, bearer auth, reads, changes, audit, offline docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from prompts.artifact import Artifact
from prompts.defaults import default_artifact
from prompts.store import PromptStore
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy

MODEL = "org/model-a"  # a slash in the id: models travel as a query parameter
ADMIN = {"authorization": "Bearer admin-secret"}


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(models=(MODEL,)) as fake:
        yield fake


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Artifact, Artifact]:
    a, b = make_artifact(MODEL, "Prompt A"), make_artifact(MODEL, "Prompt B")
    with PromptStore(tmp_path / "store") as store:
        store.put(a, activate=True)
        store.put(b, activate=True)
    return a, b


def test_admin_is_404_unless_a_key_is_configured(backend: FakeBackend, tmp_path: Path) -> None:
    with running_proxy(make_settings(tmp_path, backend.url)) as base:
        assert httpx.get(base + "/admin/models", headers=ADMIN).status_code == 404
        assert httpx.get(base + "/admin/docs").status_code == 404


def test_admin_needs_its_own_key_not_a_client_key(backend: FakeBackend, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, backend.url, admin_key=SecretStr("admin-secret"), api_keys=[SecretStr("client-key")]
    )
    with running_proxy(settings) as base:
        for headers in ({}, {"authorization": "Bearer client-key"}, {"authorization": "Bearer admin-secre"}):
            response = httpx.get(base + "/admin/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(base + "/admin/models", headers=ADMIN).status_code == 200
        # The admin key is not a client key either.
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(base + "/v1/chat/completions", json=chat, headers=ADMIN).status_code == 401


def test_read_change_and_audit_through_the_admin_api(
    backend: FakeBackend, tmp_path: Path, seeded: tuple[Artifact, Artifact]
) -> None:
    a, b = seeded
    settings = make_settings(tmp_path, backend.url, admin_key=SecretStr("admin-secret"), admin_key_name="ops")
    with running_proxy(settings) as base:
        models = httpx.get(base + "/admin/models", headers=ADMIN).json()
        assert models[0] == {
            "model": "*",
            "active": default_artifact().version,
            "versions": 1,
            "builtin_default": True,
            "split": None,
            "candidates": [],
            "refresh": None,
        }
        assert models[1] == {
            "model": MODEL,
            "active": b.version,
            "versions": 2,
            "builtin_default": False,
            "split": None,
            "candidates": [],
            "refresh": None,
        }
        versions = httpx.get(base + "/admin/versions", params={"model": MODEL}, headers=ADMIN).json()
        assert [v["version"] for v in versions] == [a.version, b.version] and versions[1]["active"]
        one = httpx.get(base + "/admin/version", params={"model": MODEL, "version": a.version[:6]}, headers=ADMIN)
        assert one.json()["artifact"]["system_prompt"] == "Prompt A" and one.json()["active"] is False
        diff = httpx.get(base + "/admin/diff", params={"model": MODEL, "a": a.version, "b": "active"}, headers=ADMIN)
        assert "-Prompt A" in diff.json()["diff"] and "+Prompt B" in diff.json()["diff"]

        switched = httpx.post(
            base + "/admin/activate", params={"model": MODEL}, json={"version": a.version}, headers=ADMIN
        )
        assert switched.json() == {"model": MODEL, "active": a.version, "previous": b.version}
        back = httpx.post(base + "/admin/rollback", params={"model": MODEL}, headers=ADMIN)
        assert back.json()["active"] == b.version
        weights = {a.version: 90, b.version[:6]: 10}
        split = httpx.put(base + "/admin/split", params={"model": MODEL}, json={"weights": weights}, headers=ADMIN)
        assert split.json() == {"model": MODEL, "weights": {a.version: 90, b.version: 10}}
        cleared = httpx.delete(base + "/admin/split", params={"model": MODEL}, headers=ADMIN)
        assert cleared.json() == {"model": MODEL, "weights": None}

        missing = httpx.get(base + "/admin/version", params={"model": MODEL, "version": "zzzz"}, headers=ADMIN)
        assert missing.status_code == 404 and "no version 'zzzz'" in missing.json()["error"]["message"]
        audit = httpx.get(base + "/admin/audit", params={"model": MODEL}, headers=ADMIN).json()
        assert [(e["actor"], e["action"].split(" ")[0], e["version"]) for e in audit] == [
            ("admin:ops", "activate", a.version),
            ("admin:ops", "rollback", b.version),
            ("admin:ops", "split", None),
            ("admin:ops", "split", None),
        ]
        assert "admin-secret" not in str(audit)


def test_openapi_schema_and_docs_page_without_any_cdn(backend: FakeBackend, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backend.url, admin_key=SecretStr("admin-secret"))
    with running_proxy(settings) as base:
        schema = httpx.get(base + "/admin/openapi.json").json()
        expected = {"/models", "/versions", "/version", "/diff", "/activate", "/rollback", "/split", "/audit"}
        assert expected <= set(schema["paths"])
        page = httpx.get(base + "/admin/docs").text
        assert "swagger-ui-bundle.js" in page and "cdn" not in page.lower() and "https://" not in page
        script = page.split('src="')[1].split('"')[0]
        assert script.startswith("/admin/") and httpx.get(base + script).status_code == 200
