"""Helpers for the gateway tests: the shipped example config pointed at a real
verifiers process, and an in-process gateway on port 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.gateway import GatewayService
from referee.rewardsvc.gateway_config import parse_gateway_config
from referee.rewardsvc.server import ServerHandle, create_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "configs" / "gateway.yaml"
# format's default checks (R1 layout) with the example's strict: false.
GOOD = "<think>2+2 is 4</think>\n<answer>4</answer>"
WRONG = "<think>2+2 is 5</think>\n<answer>5</answer>"
NO_FORMAT = "The answer is 4"


def example_data(address: str, **health: float) -> dict[str, Any]:
    """The example config as a mapping, its upstream at `address`."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["upstreams"]["verifiers"]["address"] = address
    data["health"].update(health)
    return data


async def start_gateway(data: dict[str, Any], **server: Any) -> ServerHandle:
    service = GatewayService(parse_gateway_config(data))
    try:
        handle = create_server(ServerConfig(port=0, **server), [service])
    except BaseException:
        await service.close()
        raise
    await handle.start()
    return handle


async def health_status(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return resp.status


async def wait_health(address: str, want: int, timeout: float = 60.0, service: str = "") -> None:
    """Polls (bounded) until the server reports `want`."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = await health_status(address, service)
        if got == want:
            return
        await asyncio.sleep(0.1)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    raise AssertionError(f"health of {service!r} stayed {name(got or 0)}, wanted {name(want)}")
