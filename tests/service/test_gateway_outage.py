"""An upstream outage behind the gateway: the verifiers process is stopped, then
restarted on the same port. While it is down, composite samples come back non-OK naming
the failed components (never 0), a fallback composite says it used its fallback, and the
gateway's health is NOT_SERVING; once it is back, health and scores recover."""

from __future__ import annotations

import pytest
from gateway_kit import GOOD, example_data, start_gateway, wait_health
from grpc_health.v1 import health_pb2
from service_kit import CliServer, start_cli_server

from referee.rewardsvc.client import RewardClient
from referee.types import Status

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ARGS = ["--workers", "1", "--no-entrypoints"]
ROW = {"id": "good", "completion": GOOD, "reference": "4"}


def gateway_data(address: str) -> dict:
    data = example_data(address, interval_s=0.3, timeout_s=1.0)
    data["upstreams"]["verifiers"]["timeout_s"] = 1.5  # how long a call waits for a dead upstream
    fallback = dict(data["rewards"]["math_with_format"])
    fallback.pop("description")
    fallback.update(on_failure="fallback", fallback_value=-1.0)
    data["rewards"]["with_fallback"] = fallback
    return data


async def test_outage_is_reported_and_recovers() -> None:
    servers: list[CliServer] = [start_cli_server(ARGS)]
    port = servers[0].address.rsplit(":", 1)[1]
    handle = await start_gateway(gateway_data(servers[0].address))
    try:
        async with RewardClient(handle.address, timeout_s=30) as client:
            [before] = await client.score("math_with_format", [ROW])
            assert (before.status, before.value) == (Status.OK, pytest.approx(1.0))
            await wait_health(handle.address, SERVING)

            servers[0].stop()
            await wait_health(handle.address, NOT_SERVING, timeout=30)
            await wait_health(handle.address, NOT_SERVING, service="upstream/verifiers")
            assert handle.services[0].upstream_problems["verifiers"]  # type: ignore[attr-defined]

            [down] = await client.score("math_with_format", [ROW])
            assert down.status is Status.UNAVAILABLE
            assert down.value is None  # a failure, not a score of 0
            assert "component math (verifiers/math) UNAVAILABLE" in down.reason
            assert "component format (verifiers/format) UNAVAILABLE" in down.reason
            [routed] = await client.score("math", [ROW])
            assert (routed.status, routed.value) == (Status.UNAVAILABLE, None)
            [fell_back] = await client.score("with_fallback", [ROW])
            assert (fell_back.status, fell_back.value) == (Status.OK, -1.0)
            assert fell_back.reason.startswith("fallback value -1: component math")

            servers.append(start_cli_server([*ARGS, "--port", port]))
            await wait_health(handle.address, SERVING, timeout=60)
            [after] = await client.score("math_with_format", [ROW])
            assert (after.status, after.value) == (Status.OK, pytest.approx(1.0)), after.reason
            [fallback_after] = await client.score("with_fallback", [ROW])
            assert fallback_after.value == pytest.approx(1.0)
    finally:
        await handle.stop(0)
        for s in servers:
            s.stop()
