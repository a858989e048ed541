"""`drpo serve`: start-up checks, backend resolution, and the real thing end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from drpo.cli import app
from drpo.cli_serve import (
    ServeConfigError,
    check_bind,
    is_loopback,
    needs_embedded_backend,
    resolve_settings,
)
from drpo.embedded import free_port, wait_until_ok
from prompts.config import Settings
from prompts.defaults import default_artifact
from tests.integration import unavailable

REPO = Path(__file__).resolve().parents[1]
_OUR_ENV = ("DRPO_API_KEYS", "DRPO_BACKEND_URL", "DRPO_BACKEND_API_KEY", "DRPO_CONFIG", "DRPO_HOST", "DRPO_PORT")


@pytest.fixture
def clean_env(drpo_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in _OUR_ENV:
        monkeypatch.delenv(name, raising=False)
    return drpo_home


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OUR_ENV}
    return {**env, "DRPO_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind() -> None:
    check_bind("127.0.0.1", has_client_keys=False, insecure=False)
    check_bind("0.0.0.0", has_client_keys=True, insecure=False)
    check_bind("0.0.0.0", has_client_keys=False, insecure=True)
    with pytest.raises(ServeConfigError, match="DRPO_API_KEYS"):
        check_bind("0.0.0.0", has_client_keys=False, insecure=False)


def test_resolve_settings_backends(tmp_path: Path) -> None:
    base = Settings(home=tmp_path)
    settings, config = resolve_settings(
        base, host=None, port=None, backends=[], backend_api_key=None, config=None, log_level=None
    )
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert needs_embedded_backend(settings, config)

    settings, config = resolve_settings(
        base,
        host="0.0.0.0",
        port=9999,
        backends=["http://gpu:8000/"],
        backend_api_key="sk-x",
        config=None,
        log_level="debug",
    )
    assert settings.backend_url == "http://gpu:8000/v1"
    assert settings.backend_api_key is not None and settings.backend_api_key.get_secret_value() == "sk-x"
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9999, "DEBUG")
    assert not needs_embedded_backend(settings, config)

    settings, config = resolve_settings(
        base,
        host=None,
        port=None,
        backends=["http://a/v1", "http://b"],
        backend_api_key=None,
        config=None,
        log_level=None,
    )
    assert settings.backend_url is None
    assert {name: b.url for name, b in config.backends.items()} == {"cli-1": "http://a/v1", "cli-2": "http://b/v1"}
    assert not needs_embedded_backend(settings, config)


def test_resolve_settings_config_file(tmp_path: Path) -> None:
    path = tmp_path / "drpo.yaml"
    path.write_text(
        "backends:\n  gpu:\n    url: http://gpu:8000\nmodels:\n  m:\n    backend: gpu\n    mode: completion\n"
    )
    settings, config = resolve_settings(
        Settings(home=tmp_path), host=None, port=None, backends=[], backend_api_key=None, config=path, log_level=None
    )
    assert config.backends["gpu"].url == "http://gpu:8000/v1"
    assert config.options_for("m").mode == "completion"
    assert not needs_embedded_backend(settings, config)
    # DRPO_CONFIG (settings.config) is used when --config is not given.
    _, from_env = resolve_settings(
        Settings(home=tmp_path, config=path),
        host=None,
        port=None,
        backends=[],
        backend_api_key=None,
        config=None,
        log_level=None,
    )
    assert from_env == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backends: [1, 2\n", "not valid YAML"),
        ("surprise: 1\n", "invalid"),
        ("models:\n  m:\n    backend: nowhere\n", "unknown backend 'nowhere'"),
        ("default_backend: nowhere\n", "default_backend 'nowhere'"),
    ],
)
def test_resolve_settings_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "drpo.yaml"
    path.write_text(text)
    with pytest.raises(ServeConfigError, match=message):
        resolve_settings(
            Settings(home=tmp_path),
            host=None,
            port=None,
            backends=[],
            backend_api_key=None,
            config=path,
            log_level=None,
        )


def _invoke(*args: str) -> tuple[int, str]:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(app, ["serve", *args], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_cli_refuses_public_bind_without_keys(clean_env: Path) -> None:
    code, stderr = _invoke("--host", "0.0.0.0", "--port", "1")
    assert code == 2
    assert stderr.startswith("error: refusing to listen on non-loopback address '0.0.0.0'")
    assert "--insecure" in stderr


def test_cli_config_errors_exit_2(clean_env: Path, tmp_path: Path) -> None:
    code, stderr = _invoke("--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and stderr.startswith("error: cannot read config file")
    code, stderr = _invoke("--backend", "gpu:8000")
    assert code == 2 and "http://" in stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("backends = [")
    code, stderr = _invoke("--insecure", "--host", "0.0.0.0", "--config", str(bad))
    assert code == 2 and "not valid TOML" in stderr


def test_cli_invalid_environment_exits_2(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRPO_PORT", "eighty")
    code, stderr = _invoke()
    assert code == 2 and stderr.startswith("error: invalid DRPO_* environment")


def test_subprocess_refusal_exits_quickly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "drpo.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen" in done.stderr and "Traceback" not in done.stderr
    # Client keys lift the refusal: the same command gets past the check (and fails later, on the config).
    done = subprocess.run(
        [sys.executable, "-m", "drpo.cli", "serve", "--host", "0.0.0.0", "--config", str(tmp_path / "none.yaml")],
        env=_env(tmp_path / "home", DRPO_API_KEYS="k1,k2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot read config file" in done.stderr and "refusing" not in done.stderr


# -- the real thing ----------------------------------------------------------------


def _wait_for_line(path: Path, fragment: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if fragment in line:
                return line
        assert process.poll() is None, f"drpo serve exited early:\n{path.read_text(errors='replace')}"
        time.sleep(0.1)
    raise AssertionError(f"{fragment!r} not printed within {timeout}s:\n{path.read_text(errors='replace')}")


def _children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _llama_servers_on(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"llama_cpp.server" in argv and str(port).encode() in argv and _alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def test_insecure_public_bind_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """--insecure passes the check; the proxy serves (backend down: /ready says so) and
    SIGTERM shuts it down cleanly with exit code 0."""
    port, dead = free_port(), free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "drpo.cli", "serve", "--host", "0.0.0.0", "--insecure", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--backend", f"http://127.0.0.1:{dead}"],
            env=_env(tmp_path / "home"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(log, f"listening on http://0.0.0.0:{port}/v1", process, timeout=60)
        assert f"backend: http://127.0.0.1:{dead}/v1" in log.read_text()
        assert "warning: --insecure" in log.read_text()
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.1)
        assert health.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 503
        # The store commands work on the same DRPO_HOME while the proxy runs.
        exported = tmp_path / "default.json"
        exported.write_bytes(default_artifact().with_changes(model="m").to_json())
        prompts = [sys.executable, "-m", "drpo.cli", "prompts"]
        env = _env(tmp_path / "home")
        done = subprocess.run(
            [*prompts, "import", str(exported), "--activate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        done = subprocess.run([*prompts, "list"], env=env, capture_output=True, text=True, timeout=60)
        assert done.stdout.splitlines()[1].split() == ["m", default_artifact().with_changes(model="m").version]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        _stop(process, [], 0)


def _stop(process: subprocess.Popen[bytes], children: list[int], backend_port: int) -> None:
    """Clean up after a failed test too: SIGTERM first (lets drpo serve stop its child),
    and only then kill whatever is left, children included, so nothing is orphaned."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in [*children, *(_llama_servers_on(backend_port) if backend_port else [])]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
def test_serve_embedded_end_to_end(tmp_path: Path) -> None:
    from tests.conftest import EMBEDDED_MISSING, _integration_available

    if not _integration_available():
        unavailable(EMBEDDED_MISSING)
    import openai

    port = free_port()
    backend_port, children = 0, []
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "drpo.cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=_env(tmp_path / "home"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        line = _wait_for_line(log, "embedded backend ready at", process, timeout=180)
        backend_port = int(line.split("ready at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
        _wait_for_line(log, f"listening on http://127.0.0.1:{port}/v1", process, timeout=30)
        wait_until_ok(f"http://127.0.0.1:{port}/ready", 60, process, name="drpo serve")
        children = _children(process.pid)
        assert _llama_servers_on(backend_port), "the embedded llama.cpp server is not running"
        assert set(_llama_servers_on(backend_port)) <= set(children)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert raw.headers["x-drpo-prompt-version"] == default_artifact().version

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        _stop(process, children, backend_port)
    assert [pid for pid in children if _alive(pid)] == []
    assert _llama_servers_on(backend_port) == []
