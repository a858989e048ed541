"""How fast a change reaches every proxy replica through the shared registry on Redis.

Starts a real ``redis-server`` on a loopback port (no persistence), a fake backend and two
proxy replicas (the real app, each with its own store directory, the default
``DRPO_STORE_POLL_INTERVAL`` of 1 s), then, with ``time.perf_counter``:

- write: one ``put`` + activate through a store on the registry (lock, catch-up, Lua publish,
  local commit), against the same write on a store without a registry;
- propagation: from the write returning until both replicas serve the new version
  (``x-drpo-prompt-version``, polled every 5 ms), over ``--promotions`` promotions;
- recovery: from ``redis-server`` coming back (empty) after an outage until both replicas
  report ``registry.connected`` on ``/ready`` again.

    .venv/bin/python bench/registry_propagation.py [--promotions 20]

The last line is JSON with every figure in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prompts.registry import Registry  # noqa: E402
from prompts.store import PromptStore  # noqa: E402
from tests.fakes.fake_backend import FakeBackend  # noqa: E402
from tests.fakes.proxy_harness import make_artifact, make_settings, running_proxy  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

MODEL = "bench-model"


def _served(client: httpx.Client, base: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return client.post(base + "/v1/chat/completions", json=body).headers["x-drpo-prompt-version"]


def _until(check: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("no convergence within the timeout")
        time.sleep(0.005)
    return (time.perf_counter() - start) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=20)
    args = parser.parse_args()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis_server = RedisServer(home)
        redis_server.start()
        url = redis_server.url
        replica = {"registry_url": url, "store_poll_interval": 1.0}  # the production poll interval
        try:
            with (
                FakeBackend(models=(MODEL,)) as backend,
                running_proxy(make_settings(home / "r1", backend.url, **replica)) as one,
                running_proxy(make_settings(home / "r2", backend.url, **replica)) as two,
                PromptStore(home / "writer", actor="bench", registry=Registry.shared(url)) as writer,
                PromptStore(home / "alone") as alone,
                httpx.Client(timeout=10) as client,
            ):
                writes, alone_writes, propagation = [], [], []
                for n in range(args.promotions):
                    artifact = make_artifact(MODEL, f"Variant {n}.")
                    start = time.perf_counter()
                    writer.put(artifact, activate=True)
                    writes.append((time.perf_counter() - start) * 1000)
                    propagation.append(
                        _until(lambda v=artifact.version: all(_served(client, b) == v for b in (one, two)))
                    )
                    start = time.perf_counter()
                    alone.put(artifact, activate=True)
                    alone_writes.append((time.perf_counter() - start) * 1000)
                figures["write_with_registry_ms"] = _summary(writes)
                figures["write_without_registry_ms"] = _summary(alone_writes)
                figures["promotion_to_both_replicas_ms"] = _summary(propagation)

                redis_server.stop()
                _until(lambda: not any(client.get(b + "/ready").json()["registry"]["connected"] for b in (one, two)))
                redis_server.start()
                figures["reconnect_after_outage_ms"] = round(
                    _until(lambda: all(client.get(b + "/ready").json()["registry"]["connected"] for b in (one, two))),
                    2,
                )
        finally:
            redis_server.stop()
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
