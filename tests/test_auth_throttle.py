"""Wrong keys on the admin API and the dashboard login are counted per client address: after the limit,
429 with Retry-After, without the key being checked, until the window passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from proxy.app import create_app
from proxy.auth_throttle import AuthThrottle, client_address
from tests.fakes.proxy_harness import make_settings
from tests.fakes.server_thread import ServerThread

ADMIN_KEY = "the-admin-key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_holds_for_the_window_and_then_lifts() -> None:
    clock = Clock()
    throttle = AuthThrottle(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
        clock.now += 1
    assert throttle.retry_after("10.0.0.1") == 57  # the first failure (t=1000) ages out at t=1060
    assert throttle.retry_after("10.0.0.2") == 0  # others are not affected
    clock.now = 1061  # the first two have aged out, one is left
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 1  # the one from t=1002 ages out at t=1062


def test_a_correct_key_clears_the_count_and_zero_turns_it_off() -> None:
    throttle = AuthThrottle(limit=2, window=60, clock=Clock())
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0
    off = AuthThrottle(limit=0)
    for _ in range(100):
        off.failed("a")
    assert off.retry_after("a") == 0


def test_memory_is_bounded_by_the_number_of_addresses() -> None:
    throttle = AuthThrottle(limit=1, window=60, clock=Clock(), max_clients=100)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._failures) == 100
    assert throttle.retry_after("10.0.3.231") > 0  # the most recent are the ones kept
    assert throttle.retry_after("10.0.0.0") == 0
    assert client_address(None) == "unknown" and client_address(("192.0.2.7", 5000)) == "192.0.2.7"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[httpx.Client]:
    settings = make_settings(tmp_path, "http://127.0.0.1:9/v1", admin_key=SecretStr(ADMIN_KEY), auth_failure_limit=4)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        yield client


def test_wrong_admin_keys_then_429_even_for_the_right_key(proxy: httpx.Client) -> None:
    for n in range(4):
        wrong = proxy.get("/admin/models", headers={"authorization": f"Bearer guess-{n}"})
        assert wrong.status_code == 401
    blocked = proxy.get("/admin/models", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert blocked.status_code == 429
    assert blocked.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert ADMIN_KEY not in blocked.text


def test_the_dashboard_login_shares_the_count_with_the_admin_api(proxy: httpx.Client) -> None:
    assert proxy.get("/admin/models", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    for n in range(2):
        assert proxy.get("/admin/models", headers={"authorization": f"Bearer guess-{n}"}).status_code == 401
    for n in range(2):
        page = proxy.post("/ui/login", data={"key": f"guess-{n}", "next": "/ui/"})
        assert page.status_code == 401 and "not accepted" in page.text
    blocked = proxy.post("/ui/login", data={"key": ADMIN_KEY, "next": "/ui/"})
    assert blocked.status_code == 429 and "Too many wrong keys" in blocked.text
    assert "set-cookie" not in blocked.headers  # no session while blocked, even with the right key
    assert int(blocked.headers["retry-after"]) >= 1
    # A wrong bearer on a dashboard page counts too, and is refused the same way.
    assert proxy.get("/ui/", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 429
    # Reading without any key is not a guess: the read-only dashboard stays open.
    assert proxy.get("/ui/").status_code == 200
