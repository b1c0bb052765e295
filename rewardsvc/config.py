"""Typed configuration shared by every referee server (DESIGN.md section 4).

Each server's own settings (which verifiers, which model) live beside it; these are the
network, security and limit knobs every server has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; use 0.0.0.0 (or ::) to serve other hosts."""

    port: int = 0
    """Port to bind; 0 picks a free one (the server prints the address it bound)."""

    token: str | None = None
    """Bearer token every call must carry as `authorization: Bearer TOKEN`; None disables auth.
    The gRPC health service stays open so orchestrators can probe without the token."""

    tls_cert: Path | None = None
    """PEM certificate chain; with `tls_key`, the server speaks TLS only."""

    tls_key: Path | None = None
    """PEM private key matching `tls_cert`."""

    metrics_port: int | None = None
    """Port for Prometheus metrics (`/metrics` over HTTP on `host`); None disables, 0 picks one."""

    max_concurrency: int = 64
    """Calls served at once; the next one is answered RESOURCE_EXHAUSTED (clients back off)."""

    max_request_bytes: int = 64 * 1024 * 1024
    """Largest request message accepted; larger ones get RESOURCE_EXHAUSTED from gRPC."""

    grace_s: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight calls may take to finish before being cancelled."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0..65535, got {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (or neither)")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty; pass None to disable auth")


@dataclass
class VerifierPoolConfig:
    """How CPU-bound verification runs: in worker processes with a hard per-sample limit."""

    workers: int = 2
    """Worker processes; CPU-bound verifiers scale with this up to the core count."""

    timeout_s: float = 10.0
    """Per-sample time limit for verifiers that do not declare their own `timeout_s`.
    A worker that overruns is killed and replaced; its sample gets TIMEOUT."""

    max_timeout_s: float = 300.0
    """Upper bound on any verifier's declared `timeout_s`."""

    worker_memory_mb: int | None = None
    """Address-space limit per worker (RLIMIT_AS); None leaves it unlimited."""

    cache_size: int = 100_000
    """Results kept in the LRU cache (keyed by reward, version, params, sample); 0 disables."""

    max_batch_samples: int = 16384
    """Most samples one request may carry; clients split larger batches."""

    chunk_size: int = 64
    """Most samples handed to one worker at a time (smaller spreads load, larger costs less IPC)."""

    async_concurrency: int = 256
    """Samples of async (I/O-bound) verifiers awaited at once, across all calls."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 < self.timeout_s <= self.max_timeout_s:
            raise ValueError(f"timeout_s must be in (0, {self.max_timeout_s}], got {self.timeout_s}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 64:
            raise ValueError(f"worker_memory_mb must be >= 64, got {self.worker_memory_mb}")
        if self.max_batch_samples < 1 or self.chunk_size < 1 or self.async_concurrency < 1:
            raise ValueError("max_batch_samples, chunk_size and async_concurrency must be >= 1")
