"""The one server skeleton every referee service uses (DESIGN.md section 4).

`create_server` builds and binds a `grpc.aio` server with health checking, reflection,
auth, the concurrency limit, the request-size limit, TLS and metrics, and returns it
without running it, so tests drive it on port 0 and `serve` adds only signal handling:
SIGTERM (or SIGINT) flips health to NOT_SERVING, answers new calls UNAVAILABLE, lets
in-flight calls finish within the grace period, then closes the services (worker pools,
clients) and exits.

A service plugs in through the small `Service` protocol below.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.interceptors import GateInterceptor
from referee.rewardsvc.metrics import ServerMetrics

log = logging.getLogger(__name__)


class Service(Protocol):
    """A gRPC service mounted on the skeleton."""

    full_name: str
    """The proto service name, e.g. ``referee.v1.RewardService`` (health and reflection)."""

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        """Registers the servicer on `server`; called once, before start."""

    async def close(self) -> None:
        """Releases what the service holds (worker processes, channels); called after stop."""


@dataclass
class ServerHandle:
    """A bound, not yet started server and what is needed to stop it cleanly."""

    server: grpc.aio.Server
    port: int
    host: str
    services: list[Service]
    health: health.aio.HealthServicer
    metrics: ServerMetrics
    metrics_port: int | None = None
    gate: GateInterceptor | None = None
    _metrics_httpd: object | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Starts serving and reports SERVING; then calls each service's optional
        ``async on_start(health)`` hook (the gateway uses it to report its upstreams)."""
        await self.server.start()
        for s in self.services:
            await self.health.set(s.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for s in self.services:
            on_start = getattr(s, "on_start", None)
            if on_start is not None:
                await on_start(self.health)

    async def stop(self, grace: float | None) -> None:
        """Refuses new calls, waits up to `grace` for in-flight ones, then frees everything."""
        await self.health.enter_graceful_shutdown()
        if grace and self.gate is not None:
            # New calls get UNAVAILABLE (retried elsewhere) while in-flight ones finish.
            t0 = time.monotonic()
            await self.gate.drain(grace)
            grace = max(0.0, grace - (time.monotonic() - t0))
        await self.server.stop(grace)
        for s in self.services:
            await s.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()  # type: ignore[attr-defined]
            self._metrics_httpd.server_close()  # type: ignore[attr-defined]


def create_server(cfg: ServerConfig, services: list[Service]) -> ServerHandle:
    """Builds the server, mounts `services`, binds the port; does not start it."""
    metrics = ServerMetrics()
    gate = GateInterceptor(cfg.token, cfg.max_concurrency, metrics)
    server = grpc.aio.server(
        interceptors=[gate],
        options=[
            ("grpc.max_receive_message_length", cfg.max_request_bytes),
            ("grpc.max_send_message_length", cfg.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
        # Extra calls past the limit must reach the interceptor to be refused with a
        # message, so gRPC's own queue is left unbounded here.
    )
    for s in services:
        s.attach(server, metrics)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.full_name for s in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    bind = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
        port = server.add_secure_port(bind, creds)
    else:
        port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind {bind}")

    handle = ServerHandle(server, port, cfg.host, services, health_servicer, metrics, gate=gate)
    if cfg.metrics_port is not None:
        from prometheus_client import start_http_server

        httpd, _ = start_http_server(cfg.metrics_port, addr=cfg.host, registry=metrics.registry)
        handle.metrics_port = httpd.server_port
        handle._metrics_httpd = httpd
    return handle


async def serve(cfg: ServerConfig, services: list[Service], name: str) -> None:
    """Runs until SIGTERM/SIGINT, then drains gracefully. Prints the bound address."""
    handle = create_server(cfg, services)
    # Handlers go in before the address is announced: whoever reads that line may send
    # SIGTERM at once, and must get a drain, not the default kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await handle.start()
    scheme = "grpcs" if cfg.tls_cert else "grpc"
    print(f"referee {name} listening on {scheme}://{handle.address}", flush=True)
    if handle.metrics_port is not None:
        print(f"metrics on http://{cfg.host}:{handle.metrics_port}/metrics", flush=True)
    try:
        await stop.wait()
        print(f"referee {name}: draining (grace {cfg.grace_s:g}s)", file=sys.stderr, flush=True)
    finally:
        await handle.stop(cfg.grace_s)
    print(f"referee {name}: stopped", file=sys.stderr, flush=True)
