"""The repository stands alone: its docs cite only files it contains."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if name.endswith((".py", ".md", ".sh", ".toml", ".yaml", ".yml"))]


def test_no_file_cites_a_design_document_outside_the_repository() -> None:
    missing = "DESIGN" + ".md"  # spelled in two parts so this file does not match itself
    citing = [
        str(path.relative_to(ROOT))
        for path in _tracked_text_files()
        if path.is_file() and missing in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert citing == [], f"these files cite {missing}, which is not in the repository: {citing}"


def test_every_path_the_architecture_doc_names_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:proxy|prompts|optimizer|drpo|tests|bench|scripts|docs)/[\w./]*)`", text))
    assert len(named) > 20, "the architecture doc should point at the code it describes"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
