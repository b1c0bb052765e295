"""A hung or crashing verifier costs its own sample, never the batch or the server."""

from __future__ import annotations

import time

import fixture_verifiers as fx
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_kit import metric, request, sample, status_names

from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

BATCH = ["a", "bb", fx.SPIN, "dddd", "eeeee", "ffffff"]


async def assert_healthy(handle: ServerHandle, reward: str) -> None:
    async with grpc.aio.insecure_channel(handle.address) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        resp = await reward_pb2_grpc.RewardServiceStub(ch).Score(
            request(reward, [sample("next", "12345")]), timeout=30
        )
    assert status_names(resp) == ["STATUS_OK"]
    assert resp.scores[0].value == 5.0


async def test_hang_times_out_alone_and_fast(custom_server: ServerHandle) -> None:
    restarts_before = metric(custom_server, "referee_worker_restarts_total", {"reason": "timeout"})
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        await stub.ListRewards(pb.ListRewardsRequest(), timeout=10)  # connect first
        t0 = time.monotonic()
        resp = await stub.Score(
            request("spin", [sample(f"s{i}", c) for i, c in enumerate(BATCH)]), timeout=30
        )
        elapsed = time.monotonic() - t0
    assert [s.id for s in resp.scores] == [f"s{i}" for i in range(6)]
    assert status_names(resp) == ["STATUS_OK"] * 2 + ["STATUS_TIMEOUT"] + ["STATUS_OK"] * 3
    assert [s.value for s in resp.scores] == [1.0, 2.0, 0.0, 4.0, 5.0, 6.0]
    assert f"exceeded the {fx.SPIN_TIMEOUT_S:g}s per-sample limit" in resp.scores[2].reason
    # The hung sample costs its time limit plus the kill, not the call's deadline.
    assert fx.SPIN_TIMEOUT_S <= elapsed < fx.SPIN_TIMEOUT_S + 1.0, elapsed
    after = metric(custom_server, "referee_worker_restarts_total", {"reason": "timeout"})
    assert after == restarts_before + 1
    assert (
        metric(custom_server, "referee_samples_total", {"reward": "spin", "status": "TIMEOUT"}) >= 1
    )
    await assert_healthy(custom_server, "spin")


async def test_timeouts_are_not_cached(custom_server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        resp = await stub.Score(request("spin", [sample("x", fx.SPIN, reference="nc")]), timeout=30)
    assert status_names(resp) == ["STATUS_TIMEOUT"]
    assert resp.scores[0].cached is False


@pytest.mark.parametrize(
    ("completion", "why"),
    [(fx.EXIT, "worker exited with code 3"), (fx.KILL, "worker died with signal 9")],
)
async def test_worker_death_is_an_error_for_that_sample(
    custom_server: ServerHandle, completion: str, why: str
) -> None:
    restarts_before = metric(custom_server, "referee_worker_restarts_total", {"reason": "error"})
    batch = ["a", "bb", "ccc", completion, "eeeee", "ffffff"]
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        resp = await reward_pb2_grpc.RewardServiceStub(ch).Score(
            request("crash", [sample(f"k{i}", c) for i, c in enumerate(batch)]), timeout=60
        )
    assert status_names(resp) == ["STATUS_OK"] * 3 + ["STATUS_ERROR"] + ["STATUS_OK"] * 2
    assert [s.value for s in resp.scores] == [1.0, 2.0, 3.0, 0.0, 5.0, 6.0]
    assert why in resp.scores[3].reason
    assert "while scoring this sample" in resp.scores[3].reason
    assert resp.scores[3].cached is False
    after = metric(custom_server, "referee_worker_restarts_total", {"reason": "error"})
    assert after == restarts_before + 1
    await assert_healthy(custom_server, "crash")
