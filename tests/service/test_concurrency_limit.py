"""--max-concurrency: calls past the limit are refused at once, with a message."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_kit import metric, request, sample, status_names

from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(inproc_servers: Any) -> ServerHandle:
    return await inproc_servers(pool=VerifierPoolConfig(workers=1), max_concurrency=1)


async def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        await asyncio.sleep(0.02)


async def test_second_call_past_the_limit_is_refused(server: ServerHandle, tmp_path: Path) -> None:
    started = tmp_path / "started"
    refused_before = metric(server, "referee_rejected_total", {"reason": "concurrency"})
    async with grpc.aio.insecure_channel(server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        slow = asyncio.ensure_future(
            stub.Score(
                request("sleepy", [sample("slow", "abc", sleep_s=1.5, touch=str(started))]),
                timeout=60,
            )
        )
        await wait_for_file(started)  # the first call holds the only slot
        assert not slow.done()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(request("sleepy", [sample("fast", "ab")]), timeout=30)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 1 concurrent calls" in info.value.details()
        # Health is exempt from the limit: orchestrators can probe a busy server.
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        assert not slow.done()

        first = await slow
        assert status_names(first) == ["STATUS_OK"]
        assert first.scores[0].value == 3.0
        # The slot is free again.
        again = await stub.Score(request("sleepy", [sample("after", "abcd")]), timeout=30)
        assert again.scores[0].value == 4.0
    assert metric(server, "referee_rejected_total", {"reason": "concurrency"}) == refused_before + 1
    assert metric(server, "referee_inflight_requests") == 0


async def test_concurrent_raw_calls_one_wins(server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        calls = [
            stub.Score(request("sleepy", [sample(f"c{i}", "abc", sleep_s=1.0)]), timeout=60)
            for i in range(2)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(errors) == 1, outcomes
    assert status_names(ok[0]) == ["STATUS_OK"]
    assert errors[0].code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 concurrent calls" in errors[0].details()
