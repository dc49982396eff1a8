"""Prometheus metrics for `GET /metrics`: requests, latencies, tokens, queue depth and rejections."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Telemetry:
    """One registry per server, so several servers (or tests) in one process never mix their counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragapp_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ragapp_request_seconds",
            "Time to answer a request (to the last byte of a stream)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.tokens = Counter("ragapp_tokens", "Tokens processed by the generator", ["kind"], registry=self.registry)
        self.queue_depth = Gauge(
            "ragapp_generation_queue_depth", "Generation requests waiting or running", registry=self.registry
        )
        self.rejected = Counter(
            "ragapp_generation_rejected", "Generation requests refused with 503 (queue full)", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
