"""vLLM as a managed backend, with the stand-in ``vllm`` executable (no GPU here).

The stand-in (tests/fakes/vllm_server.py) takes the real command line and serves a
minimal OpenAI API in vLLM's shapes; everything on drpo's side is real: the launcher, the
CLI, the proxy, and the official ``openai`` client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from drpo.child_server import wait_until_ok
from drpo.cli import app
from drpo.die_with_parent import PARENT_GONE_EXIT
from drpo.embedded import free_port
from drpo.engines import Engine, managed_backend
from drpo.vllm_backend import VLLMBackend, VLLMBackendError
from prompts.defaults import SYSTEM_PROMPT, default_artifact
from tests.fakes.vllm_path import fake_vllm_env, use_fake_vllm

REPO = Path(__file__).resolve().parents[1]
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
_OUR_ENV = ("DRPO_API_KEYS", "DRPO_BACKEND_URL", "DRPO_BACKEND_API_KEY", "DRPO_CONFIG", "DRPO_HOST", "DRPO_PORT")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in fake_vllm_env().items() if k not in _OUR_ENV}
    return {**env, "DRPO_HOME": str(home), "PYTHONPATH": str(REPO)}


def _invoke(*args: str) -> tuple[int, str]:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stderr


# -- the launcher ----------------------------------------------------------------------------


def test_vllm_serve_is_started_with_the_model_id_and_the_extra_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_vllm(monkeypatch)
    log = tmp_path / "logs" / "vllm-backend.log"
    extra = ["--max-model-len", "2048", "--gpu-memory-utilization=0.5"]
    with VLLMBackend(MODEL, extra, log_path=log, ready_timeout=60) as server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        models = httpx.get(f"{server.base_url}/models", timeout=5).json()["data"]
        assert [(m["id"], m["owned_by"]) for m in models] == [(MODEL, "vllm")]
    assert _wait_gone(pid), "vllm outlived stop()"
    assert _wait_gone(_engine_core_pid(log)), "vllm's engine process outlived stop()"
    # The log is kept, and shows the command line the child got.
    line = next(row for row in log.read_text().splitlines() if row.startswith("fake vllm: argv="))
    argv = json.loads(line.split("=", 1)[1])
    assert argv[:2] == ["serve", MODEL]
    assert argv[argv.index("--served-model-name") + 1] == MODEL
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[-3:] == extra


def test_a_vllm_that_exits_during_start_up_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_vllm(monkeypatch)
    log = tmp_path / "vllm.log"
    with pytest.raises(VLLMBackendError, match=r"exited with code 3 during start-up.*vllm\.log"):
        VLLMBackend(MODEL, ["--fake-exit", "3"], log_path=log, ready_timeout=60).start()
    assert "failing on purpose" in log.read_text()


def test_a_missing_vllm_executable_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm anywhere on it
    with pytest.raises(VLLMBackendError, match=r"not found on PATH.*pip install 'drpo-proxy\[vllm\]'"):
        VLLMBackend(MODEL).start()


def test_options_drpo_sets_itself_are_refused_after_the_double_dash() -> None:
    for arg in ("--port", "--host=0.0.0.0", "--served-model-name"):
        with pytest.raises(VLLMBackendError, match="set by drpo"):
            VLLMBackend(MODEL, [arg, "x"])
    with pytest.raises(VLLMBackendError, match="needs --model"):
        managed_backend(Engine.VLLM, None)
    assert managed_backend(Engine.LLAMACPP, None).name == "embedded backend"


def _engine_core_pid(log: Path) -> int:
    line = next(row for row in log.read_text().splitlines() if row.startswith("fake vllm: engine core pid "))
    return int(line.rsplit(" ", 1)[1])


@linux_only
def test_vllm_and_its_engine_process_die_when_the_parent_is_killed_hard(tmp_path: Path) -> None:
    """vLLM's EngineCore outlives a SIGKILLed API server and keeps the GPU: the whole group must go."""
    log = tmp_path / "v.log"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from drpo.vllm_backend import VLLMBackend
        server = VLLMBackend({MODEL!r}, log_path=Path({str(log)!r})).start()
        print(server.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env(tmp_path / "home")
    )
    child = engine = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        engine = _engine_core_pid(log)
        assert _alive(child) and _alive(engine)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_gone(child), "the vllm child outlived its SIGKILLed parent"
        assert _wait_gone(engine), "vllm's engine process outlived the SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in (child, engine):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- the CLI's errors ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(drpo_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in _OUR_ENV:
        monkeypatch.delenv(name, raising=False)
    return drpo_home


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "vllm"], "--engine vllm needs --model"),
        (["--model", MODEL], "--model is for --engine vllm"),
        (["--", "--max-model-len", "1"], "arguments after -- are for --engine vllm"),
        (["--engine", "vllm", "--model", MODEL, "--backend", "http://a:1"], "drop --backend"),
        (["--layout", "completion", "--backend", "http://a:1"], "--layout applies to the managed backend"),
    ],
)
def test_serve_refuses_contradicting_engine_options(clean_env: Path, args: list[str], message: str) -> None:
    code, stderr = _invoke("serve", *args)
    assert code == 2 and stderr.startswith("error: ") and message in stderr


def test_cli_says_how_to_install_vllm_when_it_is_missing(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for command in (["backend", "--port", str(free_port())], ["serve", "--port", str(free_port())]):
        code, stderr = _invoke(*command, "--engine", "vllm", "--model", MODEL)
        assert code == 1, stderr
        assert "vllm executable was not found" in stderr and "pip install 'drpo-proxy[vllm]'" in stderr


# -- end to end: drpo backend / drpo serve with the openai client ------------------------------


def _wait_for_line(path: Path, fragment: str, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if fragment in line:
                return line
        assert process.poll() is None, f"the command exited early:\n{path.read_text(errors='replace')}"
        time.sleep(0.1)
    raise AssertionError(f"{fragment!r} not printed within {timeout}s:\n{path.read_text(errors='replace')}")


@contextlib.contextmanager
def _drpo(args: list[str], home: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``drpo ARGS`` in the background; SIGTERM (then SIGKILL) on the way out."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "drpo.cli", *args], env=_env(home), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _vllm_port(line: str) -> int:
    """The port in 'vLLM backend ready at http://127.0.0.1:PORT/v1 ...'."""
    return int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])


def _vllm_pid(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"vllm_server.py") for a in argv) and str(port).encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no stand-in vllm on port {port}")


@linux_only
def test_drpo_backend_engine_vllm_behind_the_proxy(tmp_path: Path) -> None:
    home, backend_port, proxy_port = tmp_path / "home", free_port(), free_port()
    backend_args = ["backend", "--engine", "vllm", "--model", MODEL, "--port", str(backend_port)]
    with _drpo([*backend_args, "--", "--dtype", "half"], home, tmp_path / "backend.out") as backend:
        line = _wait_for_line(tmp_path / "backend.out", "vLLM backend ready:", backend)
        assert f"http://127.0.0.1:{backend_port}/v1" in line and f"model id {MODEL}" in line
        child = _vllm_pid(backend_port)
        argv = (home / "logs" / "vllm-backend.log").read_text()
        assert '"--dtype", "half"' in argv  # the extra args reached vllm; its log is kept
        serve = ["serve", "--port", str(proxy_port), "--backend", f"http://127.0.0.1:{backend_port}"]
        with _drpo(serve, home, tmp_path / "serve.out") as proxy:
            wait_until_ok(f"http://127.0.0.1:{proxy_port}/ready", 60, proxy, name="drpo serve")
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hello vllm"}], max_tokens=16
            )
            assert raw.parse().choices[0].message.content == "You said: hello vllm"
            assert raw.headers["x-drpo-prompt-version"] == default_artifact().version
            assert [m.id for m in client.models.list().data] == [MODEL]
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(timeout=30) == 0
        backend.send_signal(signal.SIGTERM)
        assert backend.wait(timeout=30) == 0, (tmp_path / "backend.out").read_text()
    assert _wait_gone(child), "drpo backend left vllm running"


@linux_only
def test_drpo_serve_engine_vllm_end_to_end(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    args = ["serve", "--engine", "vllm", "--model", MODEL, "--port", str(port), "--log-level", "warning"]
    with _drpo([*args, "--", "--enable-prompt-tokens-details"], home, tmp_path / "serve.out") as process:
        line = _wait_for_line(tmp_path / "serve.out", "vLLM backend ready at", process)
        backend_port = _vllm_port(line)
        child = _vllm_pid(backend_port)
        wait_until_ok(f"http://127.0.0.1:{port}/ready", 60, process, name="drpo serve")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)

        first = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "How do I bake bread?"}], max_tokens=32
        )
        assert first.choices[0].message.content == "You said: How do I bake bread?"
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: What is the capital of France?"
        usage = chunks[-1].usage
        assert usage is not None and chunks[-1].choices == []
        assert usage.completion_tokens == len(text.split())
        # The system prompt went first, so vLLM's prefix cache reused it for another question.
        system_tokens = len(f"<|system|>\n{SYSTEM_PROMPT}\n".split())
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens is not None
        assert usage.prompt_tokens_details.cached_tokens >= system_tokens - 4  # whole cache blocks only

        received = httpx.get(f"http://127.0.0.1:{backend_port}/fake/requests", timeout=5).json()
        assert received[0]["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "serve.out").read_text()
    assert _wait_gone(child), "drpo serve left vllm running"


@linux_only
def test_drpo_serve_engine_vllm_with_the_completion_layout(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    base = "org/base-model"
    args = ["serve", "--engine", "vllm", "--model", base, "--layout", "completion", "--port", str(port)]
    with _drpo(args, home, tmp_path / "serve.out") as process:
        backend_port = _vllm_port(_wait_for_line(tmp_path / "serve.out", "vLLM backend ready at", process))
        wait_until_ok(f"http://127.0.0.1:{port}/ready", 60, process, name="drpo serve")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model=base, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=32
        )
        assert answer.choices[0].message.content == "A plain answer."
        received = httpx.get(f"http://127.0.0.1:{backend_port}/fake/requests", timeout=5).json()
        assert "messages" not in received[-1]
        assert received[-1]["prompt"].startswith(f"# Instructions:\n{SYSTEM_PROMPT}")
        assert "<END>" in received[-1]["stop"]


@linux_only
def test_the_group_wrapper_refuses_an_orphan_and_passes_the_exit_code_on(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    wrapper = [sys.executable, "-m", "drpo.die_with_parent", "--group"]
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close(); raise SystemExit(3)"]
    wrong_parent = subprocess.run([*wrapper, str(os.getpid() + 1_000_000), *command], timeout=60)
    assert wrong_parent.returncode == PARENT_GONE_EXIT and not marker.exists()
    right_parent = subprocess.run([*wrapper, str(os.getpid()), *command], timeout=60)
    assert right_parent.returncode == 3 and marker.exists()
