"""How the prompt store scales with the number of versions and activations of one model.

Builds a store in a temporary directory with N versions (``put``) and N activations of
one model (default N = 10,000: what a refresh worker reaches), then times, in this
process with ``time.perf_counter``, the median of repeated runs of:

- open: ``PromptStore(dir)`` on the existing store (what every ``drpo prompts`` command does)
- snapshot: ``ArtifactSnapshot.load_now()`` (the proxy's start-up load of active artifacts)
- list: ``versions(model)`` (``drpo prompts list MODEL --versions``), and ``history(model)``
- get exact / get prefix: ``get(model, version)`` with a full id and with a 10-character prefix
- activate, rollback, import: one write each (rollback + re-activate pairs keep the stack deep)

and once, the wall time of the real ``drpo prompts list MODEL --versions`` command (which
includes ~0.5-1 s of Python start-up and imports). Only the public store API is used, so
the same script can measure an older store implementation (``PYTHONPATH=<old checkout>``).

    .venv/bin/python bench/store_scale.py [--versions N] [--activations N]

The last line is JSON with every figure in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prompts.artifact import Artifact, Example, Provenance  # noqa: E402
from prompts.store import PromptStore  # noqa: E402
from proxy.snapshot import ArtifactSnapshot  # noqa: E402

MODEL = "bench-model"


def _artifact(n: int) -> Artifact:
    return Artifact(
        model=MODEL,
        system_prompt=f"You are a careful assistant. Variant {n}.",
        examples=(Example(query=f"How do I do task {n}?", answer=f"Step by step, task {n}."),),
        provenance=Provenance(method="optimize", scores={"val": n / 100}),
    )


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _build(directory: Path, versions: int, activations: int) -> tuple[list[str], dict[str, float]]:
    artifacts = [_artifact(n) for n in range(versions)]
    with PromptStore(directory) as store:
        start = time.perf_counter()
        ids = [store.put(a).version for a in artifacts]
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        for n in range(activations):
            store.activate(MODEL, ids[(n * 7919) % versions])
        activate_s = time.perf_counter() - start
    return ids, {"put_ms_each": put_s * 1000 / versions, "activate_ms_each": activate_s * 1000 / activations}


def _measure(directory: Path, ids: list[str]) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures["open_ms"] = _median_ms(lambda: PromptStore(directory).close(), 20)
    with PromptStore(directory) as store:

        def snapshot() -> None:
            ArtifactSnapshot(store, 1.0).load_now()

        figures["snapshot_load_ms"] = _median_ms(snapshot, 20)
        figures["versions_list_ms"] = _median_ms(lambda: store.versions(MODEL), 5)
        figures["history_ms"] = _median_ms(lambda: store.history(MODEL), 5)
        figures["get_exact_ms"] = _median_ms(lambda: store.get(MODEL, ids[len(ids) // 2]), 50)
        figures["get_prefix_ms"] = _median_ms(lambda: store.get(MODEL, ids[len(ids) // 2][:10]), 5)
        figures["activate_ms"] = _median_ms(lambda: store.activate(MODEL, ids[3]), 20)
        figures["rollback_ms"] = _median_ms(lambda: store.rollback(MODEL), 20)
        fresh = iter(_artifact(10**7 + n) for n in range(1000))
        figures["import_ms"] = _median_ms(lambda: store.put(next(fresh)), 20)
    return figures


def _cli_list_ms(home: Path) -> float | None:
    drpo = Path(sys.executable).with_name("drpo")
    if not drpo.exists():
        return None
    env = {**os.environ, "DRPO_HOME": str(home), "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    start = time.perf_counter()
    command = [str(drpo), "prompts", "list", MODEL, "--versions"]
    done = subprocess.run(command, capture_output=True, env=env, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    return round(elapsed, 1) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--activations", type=int, default=10_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="drpo-store-scale-"))
    try:
        directory = home / "store"
        start = time.perf_counter()
        ids, build = _build(directory, args.versions, args.activations)
        took = time.perf_counter() - start
        print(f"built {args.versions} versions and {args.activations} activations in {took:.1f} s")
        figures = {**{k: round(v, 3) for k, v in build.items()}, **_measure(directory, ids)}
        cli = _cli_list_ms(home)
        if cli is not None:
            figures["cli_list_versions_ms"] = cli
        for name, value in figures.items():
            print(f"{name:>24}: {value}")
        print(json.dumps({"versions": args.versions, "activations": args.activations, **figures}))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
