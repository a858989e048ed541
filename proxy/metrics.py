"""Prometheus metrics, on a registry owned by one app (several apps may share a process).

Label children are cached in dicts so the hot path pays a dict look-up, not
prometheus-client's label validation, per observation.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1)
_CHARS_BUCKETS = (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "drpo_requests_total",
            "Requests handled, by model, prompt version and HTTP status.",
            ["model", "prompt_version", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "drpo_request_duration_seconds",
            "Wall time of a request, from arrival to the end of the response.",
            ["model", "prompt_version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "drpo_proxy_overhead_seconds",
            "Time spent in the proxy itself, excluding waiting for the backend.",
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "drpo_time_to_first_token_seconds",
            "Streams: time from arrival to the first data event sent to the client.",
            ["model", "prompt_version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.injected_chars = Histogram(
            "drpo_injected_prompt_chars",
            "Characters the proxy added to a request (system prompt and examples).",
            buckets=_CHARS_BUCKETS,
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "drpo_backend_errors_total",
            "Backend failures, by model, prompt version and kind (connect, timeout, disconnect, http_<status>...).",
            ["model", "prompt_version", "kind"],
            registry=self.registry,
        )
        self._registry_connected: Gauge | None = None
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._ttfts: dict[tuple[str, str], Histogram] = {}

    def request_done(self, model: str, version: str, status: int, seconds: float, overhead: float) -> None:
        key = (model, version, str(status))
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(*key)
        counter.inc()
        duration = self._durations.get(key[:2])
        if duration is None:
            duration = self._durations[key[:2]] = self.duration.labels(model, version)
        duration.observe(seconds)
        self.overhead.observe(overhead)

    def first_token(self, model: str, version: str, seconds: float) -> None:
        histogram = self._ttfts.get((model, version))
        if histogram is None:
            histogram = self._ttfts[(model, version)] = self.ttft.labels(model, version)
        histogram.observe(seconds)

    def backend_error(self, model: str, version: str, kind: str) -> None:
        self.backend_errors.labels(model, version, kind).inc()

    def watch_registry(self, connected: Callable[[], bool]) -> None:
        """Export whether the shared registry is reachable (only when one is configured)."""
        if self._registry_connected is None:
            self._registry_connected = Gauge(
                "drpo_registry_connected",
                "1 while the shared prompt registry (Redis) is reachable, 0 while serving the local copy.",
                registry=self.registry,
            )
        self._registry_connected.set_function(lambda: 1.0 if connected() else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
