"""`drpo prompts ...` driven through the real command line against a temporary DRPO_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from drpo.cli import app
from prompts.artifact import Artifact, Example, Provenance
from prompts.config import get_settings
from prompts.defaults import default_artifact
from prompts.store import PromptStore

REPO = Path(__file__).resolve().parents[1]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr separate


def run(*args: str) -> Result:
    return _runner().invoke(app, ["prompts", *args], catch_exceptions=False)


def _artifact(prompt: str, model: str = "m", **provenance: object) -> Artifact:
    return Artifact(
        model=model,
        system_prompt=prompt,
        examples=(Example(query="How do I stop a Python process?", answer="Press Ctrl-C."),),
        provenance=Provenance(**provenance),
    )


def _store() -> PromptStore:
    return PromptStore(get_settings().store_dir)


@pytest.fixture
def seeded(drpo_home: Path) -> list[Artifact]:
    a = _artifact("Prompt A", method="optimize", scores={"val": 4.5})
    b = _artifact("Prompt B")
    with _store() as store:
        store.put(a, activate=True)
        store.put(b, activate=True)
        store.put(_artifact("Other", model="other"))
    return [a, b]


def _fails(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_list_models(seeded: list[Artifact]) -> None:
    result = run("list")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"*  {default_artifact().version}  built-in default artifact",
        f"m  {seeded[1].version}",
        "other  (none active: serves the built-in default)",
    ]
    assert run("list", "m").stdout.splitlines() == [f"m  {seeded[1].version}"]


def test_list_on_an_empty_store_shows_what_is_served(drpo_home: Path) -> None:
    result = run("list")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"*  {default_artifact().version}  built-in default artifact"]


def test_list_versions(seeded: list[Artifact]) -> None:
    a, b = seeded
    result = run("list", "m", "--versions")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [a.version, b.version]
    assert "optimize" in lines[0] and "val=4.50" in lines[0] and "(active)" not in lines[0]
    assert "manual" in lines[1] and lines[1].endswith("(active)")
    assert a.provenance.created_at.strftime("%Y-%m-%dT%H:%M:%S") in lines[0]


def test_list_errors(seeded: list[Artifact]) -> None:
    _fails(run("list", "--versions"), "needs a MODEL")
    _fails(run("list", "nobody", "--versions"), "nobody")
    _fails(run("list", "nobody"), "nobody")


def test_show(seeded: list[Artifact]) -> None:
    a, b = seeded
    result = run("show", "m")
    assert result.exit_code == 0
    assert f"version:     {b.version} (active)" in result.stdout
    assert "Prompt B" in result.stdout
    assert "Q: How do I stop a Python process?" in result.stdout and "A: Press Ctrl-C." in result.stdout
    old = run("show", "m", "--version", a.version[:6])
    assert "Prompt A" in old.stdout and "(inactive)" in old.stdout and "val=4.50" in old.stdout
    raw = run("show", "m", "--json", "--version", a.version)
    assert Artifact.from_json(raw.stdout) == a


def test_show_errors(seeded: list[Artifact]) -> None:
    _fails(run("show", "m", "--version", "zzzz"), "no version 'zzzz'")
    _fails(run("show", "nobody", "--version", "abc"), "no version 'abc'")


def test_show_and_export_of_a_model_without_versions_give_what_the_proxy_serves(
    seeded: list[Artifact], tmp_path: Path
) -> None:
    shown = run("show", "nobody")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("nobody has no active version: the proxy serves it the built-in default artifact")
    assert f"version:     {default_artifact().version}" in shown.stdout
    out = tmp_path / "served.json"
    exported = run("export", "other", str(out))  # stored versions, none active
    assert exported.exit_code == 0 and "built-in default" in exported.stderr
    assert Artifact.from_json(out.read_bytes()) == default_artifact()


def test_diff_of_two_versions(seeded: list[Artifact]) -> None:
    a, b = seeded
    result = run("diff", "m", a.version[:6], "active")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"--- {a.version}\n+++ {b.version}")
    assert "-Prompt A" in result.stdout and "+Prompt B" in result.stdout
    same = run("diff", "m", b.version, "active")
    assert same.stdout.strip() == f"{b.version} and {b.version} are identical"
    _fails(run("diff", "m", "zzzz", "active"), "no version 'zzzz'")


def test_activate_and_rollback(seeded: list[Artifact]) -> None:
    a, b = seeded
    result = run("activate", "m", a.version[:7])
    assert result.exit_code == 0 and result.stdout.strip() == f"m: active version {a.version}"
    with _store() as store:
        assert store.active_version("m") == a.version
    result = run("rollback", "m")
    assert result.exit_code == 0 and result.stdout.strip() == f"m: rolled back from {a.version} to {b.version}"
    result = run("rollback", "m")
    assert result.stdout.strip() == f"m: rolled back from {b.version} to {a.version}"
    _fails(run("rollback", "m"), "no earlier active version")
    _fails(run("rollback", "other"), "no active version")
    _fails(run("activate", "m", "ffffff"), "no version")


def test_export_import_round_trip(seeded: list[Artifact], tmp_path: Path) -> None:
    a, b = seeded
    path = tmp_path / "export" / "m.json"
    result = run("export", "m", str(path))
    assert result.exit_code == 0 and str(path) in result.stderr
    assert Artifact.from_json(path.read_bytes()) == b
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temp file left behind
    run("export", "m", str(path), "--version", a.version)
    assert Artifact.from_json(path.read_bytes()) == a
    stdout = run("export", "m", "-")
    assert Artifact.from_json(stdout.stdout) == b

    again = run("import", str(path))
    assert again.exit_code == 0 and again.stdout.strip() == f"m {a.version} (already stored)"

    data = json.loads(path.read_text())
    data["system_prompt"] = "Prompt A, edited by hand"
    path.write_text(json.dumps(data))
    result = run("import", str(path), "--activate")
    edited = Artifact.model_validate(data)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"m {edited.version} (new version, activated)"
    assert edited.version not in (a.version, b.version)
    with _store() as store:
        assert store.get("m") == edited
        assert len(store.versions("m")) == 3


def test_import_into_new_model(drpo_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    artifact = _artifact("Fresh", model="fresh-model")
    path.write_bytes(artifact.to_json())
    result = run("import", str(path))
    assert result.stdout.strip() == f"fresh-model {artifact.version} (new version)"
    assert run("list").stdout.splitlines()[1:] == ["fresh-model  (none active: serves the built-in default)"]


def test_import_and_export_errors(seeded: list[Artifact], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    _fails(run("import", str(bad)), "not valid JSON")
    bad.write_text(json.dumps({"model": "m"}))
    _fails(run("import", str(bad)), "not a valid artifact")
    _fails(run("import", str(tmp_path / "missing.json")), "cannot read")
    _fails(run("export", "nobody", str(tmp_path / "x.json"), "--version", "abc"), "no version 'abc'")
    assert not (tmp_path / "x.json").exists()


def test_import_drpo_released(drpo_home: Path, shared_data: Path) -> None:
    directory = shared_data / "drpo-released" / "mistral-7b-v0.1"
    icl = shared_data / "drpo-train" / "ICL_examples.json"
    result = run("import-drpo", str(directory), "--model", "mistral-7b", "--icl", str(icl), "--activate")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().endswith("(new version, activated)")
    with _store() as store:
        artifact = store.get("mistral-7b")
    levels = json.loads((directory / "output.json").read_text())
    assert artifact.system_prompt == levels["level 30"]["Prompt"].strip()
    assert len(artifact.examples) == 16
    versions = run("list", "mistral-7b", "--versions").stdout.splitlines()
    assert versions[0].split()[0] == artifact.version and "import-drpo" in versions[0]


def test_import_drpo_without_examples_and_layout(drpo_home: Path, tmp_path: Path) -> None:
    (tmp_path / "output.json").write_text(json.dumps({"level 2": {"Prompt": "Two"}, "level 1": {"Prompt": "One"}}))
    result = run("import-drpo", str(tmp_path), "-m", "base", "--layout", "completion")
    assert result.exit_code == 0
    assert "no ICL_examples.json" in result.stderr
    with _store() as store:
        (info,) = store.versions("base")
        artifact = store.get("base", info.version)
    assert artifact.system_prompt == "Two" and artifact.layout == "completion"
    _fails(run("import-drpo", str(tmp_path), "-m", "base", "--layout", "weird"), "--layout")


def test_import_drpo_errors(drpo_home: Path, tmp_path: Path) -> None:
    _fails(run("import-drpo", str(tmp_path), "--model", "x"), "cannot read")
    (tmp_path / "output.json").write_text(json.dumps({"level 1": {}}))
    _fails(run("import-drpo", str(tmp_path), "--model", "x"), "'Prompt'")
    assert run("list").stdout.splitlines()[1:] == []


def test_invalid_environment(drpo_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRPO_PORT", "eighty")
    get_settings.cache_clear()
    _fails(run("list"), "invalid DRPO_* environment")


def test_default(drpo_home: Path) -> None:
    result = run("default")
    assert result.exit_code == 0 and default_artifact().system_prompt in result.stdout
    assert Artifact.from_json(run("default", "--json").stdout) == default_artifact()


def test_real_console_entry_point(seeded: list[Artifact], drpo_home: Path) -> None:
    """The installed entry point, in a separate process: exit codes and stderr, no traceback."""
    env = {**os.environ, "DRPO_HOME": str(drpo_home), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "drpo.cli", "prompts"]
    ok = subprocess.run([*command, "list", "m", "--versions"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert ok.stdout.splitlines()[-1].startswith(seeded[1].version)
    bad = subprocess.run([*command, "show", "m", "-v", "zzzz"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: model 'm' has no version 'zzzz'"


def test_every_cli_change_is_in_the_audit_log_with_who_and_never_a_key(
    seeded: list[Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRPO_API_KEYS", "sk-secret-client-key")
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    a, b = seeded
    run("activate", "m", a.version)
    run("rollback", "m")
    exported = tmp_path / "c.json"
    exported.write_bytes(a.with_changes(system_prompt="Prompt C").to_json())
    run("import", str(exported))
    lines = run("audit", "m").stdout.splitlines()
    assert [line.split("  ")[1:4] for line in lines] == [
        ["cli:alice", "activate", "m"],
        ["cli:alice", "rollback", "m"],
        ["cli:alice", "import", "m"],
    ]
    assert lines[0].endswith(a.version) and lines[1].endswith(b.version)
    assert "sk-secret" not in run("audit").stdout
    assert len(run("audit", "--limit", "1").stdout.splitlines()) == 1
