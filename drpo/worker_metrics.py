"""The refresh worker's Prometheus metrics, served on its own port (the proxy has its own)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "drpo_refresh_runs",
            "Finished refresh runs by outcome (promoted, candidate, failed, stopped, interrupted).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "drpo_refresh_last_success_timestamp_seconds",
            "When a refresh of the model last ended with a version promoted or kept as candidate.",
            ["model"],
            registry=self.registry,
        )
        self.calls = Counter(
            "drpo_refresh_llm_calls", "Fresh LLM calls made by refresh runs.", ["model"], registry=self.registry
        )
        self.tokens = Counter(
            "drpo_refresh_tokens",
            "Fresh tokens (prompt + completion) spent by refresh runs.",
            ["model"],
            registry=self.registry,
        )

    def observe(self, model: str, record: dict[str, Any]) -> None:
        outcome = str(record.get("outcome", "unknown"))
        self.runs.labels(model, outcome).inc()
        if outcome in ("promoted", "candidate") and record.get("ended_at"):
            self.last_success.labels(model).set(datetime.fromisoformat(str(record["ended_at"])).timestamp())
        self.calls.labels(model).inc(int(record.get("calls", 0) or 0))
        self.tokens.labels(model).inc(int(record.get("tokens", 0) or 0))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # all interfaces: scraped from outside the pod
        start_http_server(port, addr=host, registry=self.registry)
