"""Prometheus metrics for a referee server, served on a side port.

Each server owns its registry (not the process-global one), so several servers in one
process (tests, `referee up`) never collide and each side port shows only its own server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "referee_requests", "gRPC calls by method and final code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "referee_request_latency_seconds", "gRPC call latency", ["method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge("referee_inflight_requests", "gRPC calls being served", registry=r)
        self.rejected = Counter(
            "referee_rejected", "calls refused before running", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "referee_queue_depth", "samples waiting for a worker process", registry=r
        )
        self.samples = Counter(
            "referee_samples", "scored samples by reward and status", ["reward", "status"], registry=r
        )
        self.sample_latency = Histogram(
            "referee_sample_seconds", "verifier time per sample", ["reward"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cache_hits = Counter("referee_cache_hits", "results served from the cache", registry=r)
        self.cache_misses = Counter("referee_cache_misses", "results computed", registry=r)
        self.worker_restarts = Counter(
            "referee_worker_restarts", "worker processes replaced", ["reason"], registry=r
        )
