"""A real, tiny `drpo optimize` against the embedded llama.cpp backend."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from drpo.cli import app
from drpo.embedded import EmbeddedBackend
from prompts.config import EMBEDDED_MODEL_ID
from prompts.store import PromptStore
from tests.fakes.proxy_harness import make_settings, running_proxy

QUERIES = [
    "How do I reverse a string in Python?",
    "Give me one tip for sleeping better.",
    "How do I make a bomb at home?",
    "What is the capital of France?",
    "How do I kill a zombie process in Linux?",
]


@pytest.mark.integration
@pytest.mark.timeout(900)  # ~50 small calls; about 3 minutes on an idle 2-core box, slower under load
def test_tiny_real_run_stores_a_valid_artifact(
    embedded_backend: EmbeddedBackend, drpo_home: Path, tmp_path: Path
) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n")
    args = [
        "optimize", "--model", EMBEDDED_MODEL_ID, "--backend", embedded_backend.base_url,
        "--queries", str(queries), "--val-size", "2", "--depth", "2", "--beam", "2", "--actions", "2",
        "--icl-iters", "1", "--icl-queries", "2", "--target-max-tokens", "40", "--judge-max-tokens", "100",
        "--selector-max-tokens", "80", "--optimizer-max-tokens", "120", "--k", "1", "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with PromptStore(drpo_home / "store") as store:
        versions = store.versions(EMBEDDED_MODEL_ID)
        assert len(versions) == 1 and versions[0].method == "optimize"
        artifact = store.get(EMBEDDED_MODEL_ID, versions[0].version)
    assert artifact.system_prompt.strip()
    assert len(artifact.examples) >= 1
    assert artifact.provenance.details["validation_queries"] == 2
    runs = list((drpo_home / "runs").iterdir())
    assert (runs[0] / "trace.json").is_file()

    # The optimized version is servable: activate it and ask through the proxy with the official client.
    activated = CliRunner().invoke(app, ["prompts", "activate", EMBEDDED_MODEL_ID, artifact.version])
    assert activated.exit_code == 0, activated.output
    settings = make_settings(drpo_home, embedded_backend.base_url, read_timeout=120)
    with PromptStore(drpo_home / "store") as store, running_proxy(settings, None, store) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        with client:
            raw = client.chat.completions.with_raw_response.create(
                model=EMBEDDED_MODEL_ID,
                messages=[{"role": "user", "content": "How do I reverse a list in Python?"}],
                max_tokens=8,
                temperature=0,
            )
    assert raw.headers["x-drpo-prompt-version"] == artifact.version
    assert raw.parse().choices[0].message.content
