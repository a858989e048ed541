"""Who may read and change what through the dashboard (/ui): the real proxy app over HTTP on loopback.

The browser tests (test_dashboard_browser.py) cover the pages; these cover the rules, fast:
mounted or not, private reading with client keys, login, the session cookie, form tokens.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prompts.registry import Registry
from prompts.store import PromptStore
from proxy.app import create_app
from proxy.ui_session import SESSION_SECONDS, UiAccess
from tests.fakes.proxy_harness import make_artifact, make_settings
from tests.fakes.server_thread import ServerThread
from tests.redis_server import RedisServer

MODEL = "org/model"
ADMIN_KEY = "admin-key-for-the-dashboard"
CLIENT_KEY = "client-key-1"
# How long a change made through one replica may take to reach another through Redis on a loaded
# machine; the wait loop stops as soon as it arrives, so the generous bound costs nothing when fast.
PROPAGATION_WAIT = 30.0


@pytest.fixture
def versions(tmp_path: Path) -> tuple[str, str]:
    with PromptStore(tmp_path / "store") as store:
        first = store.put(make_artifact(MODEL, system_prompt="First prompt <b>bold</b>"), activate=True)
        second = store.put(make_artifact(MODEL, system_prompt="Second prompt"))
    return first.version, second.version


def _serve(tmp_path: Path, **overrides: Any) -> ServerThread:
    return ServerThread(create_app(make_settings(tmp_path, "http://127.0.0.1:9/v1", **overrides)))


@pytest.fixture
def admin_server(tmp_path: Path, versions: tuple[str, str]) -> Iterator[httpx.Client]:
    with (
        _serve(tmp_path, admin_key=ADMIN_KEY, admin_key_name="ops") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        yield client


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def _login(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/ui/login", data={"key": key, "next": "/ui/"})


def _active(tmp_path: Path) -> str | None:
    with PromptStore(tmp_path / "store") as store:
        return store.active_version(MODEL)


def test_read_only_without_a_session_and_every_change_refused(
    admin_server: httpx.Client, versions: tuple[str, str], tmp_path: Path
) -> None:
    page = admin_server.get("/ui/model", params={"model": MODEL})
    assert page.status_code == 200 and versions[1] in page.text
    assert "data-action" not in page.text
    assert "First prompt &lt;b&gt;bold&lt;/b&gt;" in admin_server.get("/ui/version", params={"model": MODEL}).text
    refused = admin_server.post("/ui/activate", data={"model": MODEL, "version": versions[1], "csrf": "x"})
    assert refused.status_code == 403
    assert _active(tmp_path) == versions[0]
    headers = page.headers
    assert (
        "script-src" not in headers["content-security-policy"]
        and "default-src 'none'" in headers["content-security-policy"]
    )
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"


def test_login_sets_an_opaque_strict_cookie_and_buttons_need_the_form_token(
    admin_server: httpx.Client, versions: tuple[str, str], tmp_path: Path
) -> None:
    assert _login(admin_server, "wrong").status_code == 401
    response = _login(admin_server, ADMIN_KEY)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookie = response.headers["set-cookie"]
    assert ADMIN_KEY not in cookie
    assert all(part in cookie for part in ("HttpOnly", "SameSite=strict", "Path=/ui/"))

    page = admin_server.get("/ui/model", params={"model": MODEL}).text
    assert 'data-action="activate"' in page and 'data-action="rollback"' in page
    assert 'data-action="promote"' in page
    token = _form_token(page)
    form = {"model": MODEL, "version": versions[1]}
    assert admin_server.post("/ui/activate", data=form).status_code == 403
    assert admin_server.post("/ui/activate", data={**form, "csrf": token + "x"}).status_code == 403
    assert _active(tmp_path) == versions[0]

    done = admin_server.post("/ui/activate", data={**form, "csrf": token, "next": "https://elsewhere.example/"})
    assert done.status_code == 303 and done.headers["location"] == "/ui/model?model=org%2Fmodel"
    assert _active(tmp_path) == versions[1]
    assert admin_server.post("/ui/rollback", data={"model": MODEL, "csrf": token}).status_code == 303
    assert _active(tmp_path) == versions[0]
    with PromptStore(tmp_path / "store") as store:
        assert [e["actor"] for e in store.audit_log(MODEL)][-2:] == ["admin:ops", "admin:ops"]

    nothing = admin_server.post("/ui/rollback", data={"model": MODEL, "csrf": token})
    assert nothing.status_code == 409 and "no earlier active version" in nothing.text
    unknown = admin_server.post("/ui/activate", data={"model": MODEL, "version": "ffff", "csrf": token})
    assert unknown.status_code == 404
    unknown = admin_server.post("/ui/promote", data={"model": MODEL, "version": "ffff", "csrf": token})
    assert unknown.status_code == 404  # checked before a job is started

    admin_server.post("/ui/logout", data={"csrf": token})
    assert "data-action" not in admin_server.get("/ui/model", params={"model": MODEL}).text


def test_a_tampered_or_expired_session_is_no_session() -> None:
    access = UiAccess("k", [])
    token = access.issue("admin", now=1000.0)
    assert access.verify(token, now=1000.0 + SESSION_SECONDS - 1) is not None
    assert access.verify(token, now=1000.0 + SESSION_SECONDS + 1) is None
    assert access.verify(token.replace("admin", "reader", 1), now=1000.0) is None
    assert UiAccess("another key", []).verify(token, now=1000.0) is None  # a new key ends old sessions
    assert UiAccess(None, ["k"]).verify(UiAccess(None, ["k"]).issue("reader")) is None  # per-process secret


def test_client_keys_make_reading_private(tmp_path: Path, versions: tuple[str, str]) -> None:
    with _serve(tmp_path, api_keys=[CLIENT_KEY], admin_key=ADMIN_KEY) as server, httpx.Client(base_url=server.url) as c:
        anonymous = c.get("/ui/version", params={"model": MODEL})
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/login?next=")
        assert c.get("/ui/run", params={"id": "x"}).status_code == 303
        assert c.get("/ui/", headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
        assert c.get("/ui/", headers={"authorization": "Bearer nope"}).status_code == 303

        assert _login(c, CLIENT_KEY).status_code == 303
        page = c.get("/ui/model", params={"model": MODEL})
        assert page.status_code == 200 and "read-only session" in page.text and "data-action" not in page.text
        token = _form_token(page.text)  # the logout form: a reader's token opens no change
        refused = c.post("/ui/activate", data={"model": MODEL, "version": versions[1], "csrf": token})
        assert refused.status_code == 403
        assert _active(tmp_path) == versions[0]


def test_without_an_admin_key_the_dashboard_is_read_only(tmp_path: Path, versions: tuple[str, str]) -> None:
    with _serve(tmp_path) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/ui/").status_code == 200
        assert c.get("/admin/models").status_code == 404
        assert _login(c, ADMIN_KEY).status_code == 401
        assert "no admin key configured" in c.get("/ui/login").text


def test_drpo_ui_off_removes_it(tmp_path: Path, versions: tuple[str, str]) -> None:
    with _serve(tmp_path, ui=False, admin_key=ADMIN_KEY) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/ui/").status_code == 404
        assert c.get("/health").status_code == 200


def test_missing_things_are_404_and_run_ids_cannot_leave_the_runs_dir(
    admin_server: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "state.json").write_text('{"run_id": "secret", "status": "done"}')
    for run_id in ("../secret", "..", "/etc", "a/../../secret"):
        assert admin_server.get("/ui/run", params={"id": run_id}).status_code == 404
    assert admin_server.get("/ui/model", params={"model": "nope"}).status_code == 404
    assert admin_server.get("/ui/version", params={"model": MODEL, "version": "ffff"}).status_code == 404
    assert admin_server.get("/ui/report", params={"model": MODEL, "id": f"{MODEL}#9"}).status_code == 404
    assert admin_server.get("/ui/job", params={"id": "x"}).status_code == 403
    assert admin_server.get("/ui/static/dashboard.css").headers["content-type"].startswith("text/css")


def test_with_a_shared_registry_a_change_made_on_one_replica_reaches_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    with PromptStore(tmp_path / "cli", actor="cli:test", registry=Registry.shared(url)) as cli:
        first = cli.put(make_artifact(MODEL, system_prompt="one"), activate=True).version
        second = cli.put(make_artifact(MODEL, system_prompt="two")).version
    overrides = {"admin_key": ADMIN_KEY, "registry_url": url}
    with (
        _serve(tmp_path / "r1", **overrides) as one,
        _serve(tmp_path / "r2", **overrides) as two,
        httpx.Client(base_url=one.url) as c,
    ):
        _login(c, ADMIN_KEY)
        token = _form_token(c.get("/ui/model", params={"model": MODEL}).text)
        assert c.post("/ui/activate", data={"model": MODEL, "version": second, "csrf": token}).status_code == 303
        deadline = time.monotonic() + PROPAGATION_WAIT
        while _served_by(two.url) != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _served_by(two.url) == second and first != second

        redis_server.stop()  # a change while Redis is down is refused, not made on one copy only
        refused = c.post("/ui/rollback", data={"model": MODEL, "csrf": token})
        assert refused.status_code == 503
        assert _served_by(one.url) == _served_by(two.url) == second


def _served_by(base: str) -> str | None:
    page = httpx.get(f"{base}/ui/model", params={"model": MODEL}).text
    match = re.search(r'<tr data-version="([0-9a-f]+)" class="active">', page)
    return match.group(1) if match else None
