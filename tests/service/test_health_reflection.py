"""The standard gRPC health and reflection services, and ListRewards."""

from __future__ import annotations

import asyncio
from typing import Any

import fixture_verifiers as fx
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["", "referee.v1.RewardService"])
async def test_health_serving(custom_server: ServerHandle, service: str) -> None:
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert resp.status == SERVING


async def test_health_unknown_service_is_not_found(custom_server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
            )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(custom_server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        responses = [r async for r in call]
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"referee.v1.RewardService", "grpc.health.v1.Health"} <= names


async def test_reflection_describes_the_methods(custom_server: ServerHandle) -> None:
    # The blocking descriptor database (what grpcurl-like tools build on) runs in a
    # thread: the server shares this test's event loop.
    def describe() -> tuple[list[str], Any]:
        with grpc.insecure_channel(custom_server.address) as ch:
            db = ProtoReflectionDescriptorDatabase(ch)
            return list(db.get_services()), db.FindFileContainingSymbol("referee.v1.RewardService")

    services, desc = await asyncio.wait_for(asyncio.to_thread(describe), 30)
    assert "referee.v1.RewardService" in services
    service = next(s for s in desc.service if s.name == "RewardService")
    assert {m.name for m in service.method} == {"Score", "ScoreStream", "ListRewards"}


async def test_list_rewards(custom_server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        resp = await reward_pb2_grpc.RewardServiceStub(ch).ListRewards(
            pb.ListRewardsRequest(), timeout=10
        )
    by_name = {r.name: r for r in resp.rewards}
    assert sorted(by_name) == fx.NAMES
    assert by_name["spin"].timeout_s == fx.SPIN_TIMEOUT_S
    assert by_name["sleepy"].timeout_s == 10.0  # the pool default
    params = {p.name: p for p in by_name["scaled"].params}
    assert params["scale"].type == "number"
    assert params["scale"].default_json == "1.0"
    assert params["scale"].required is False
    assert params["scale"].description == "multiplies the length"
    assert by_name["scaled"].version == "1"
