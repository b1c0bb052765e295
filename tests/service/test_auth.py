"""Bearer-token auth on a real `referee serve verifiers` process (token from REFEREE_TOKEN)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_kit import CliServer, cli_env, custom_args, request, run_cli, sample

from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.types import Status
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def server(cli_servers: Callable[..., CliServer]) -> CliServer:
    return cli_servers(custom_args(1), env=cli_env({"REFEREE_TOKEN": TOKEN}))


@pytest.fixture
def channel(server: CliServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


GOOD = request("scaled", [sample("a", "abc")])


@pytest.mark.parametrize(
    "metadata",
    [(), bearer("wrong"), (("authorization", TOKEN),)],
    ids=["none", "wrong", "not-bearer"],
)
def test_calls_without_the_token_are_refused(channel: grpc.Channel, metadata: tuple) -> None:
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    for call in (
        lambda: stub.Score(GOOD, timeout=10, metadata=metadata),
        lambda: stub.ListRewards(pb.ListRewardsRequest(), timeout=10, metadata=metadata),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == "missing or wrong bearer token"


def test_right_token_scores(channel: grpc.Channel) -> None:
    resp = reward_pb2_grpc.RewardServiceStub(channel).Score(
        GOOD, timeout=30, metadata=bearer(TOKEN)
    )
    assert resp.scores[0].status == pb.STATUS_OK
    assert resp.scores[0].value == 3.0


def test_health_needs_no_token(channel: grpc.Channel, server: CliServer) -> None:
    for service in ("", "referee.v1.RewardService"):
        h = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
    done = run_cli(["health", "--target", server.address])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"


def test_reflection_needs_the_token(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ServerReflectionInfo(iter(ask), timeout=10))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    answers = list(stub.ServerReflectionInfo(iter(ask), timeout=10, metadata=bearer(TOKEN)))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "referee.v1.RewardService" in names


def test_client_and_cli_with_and_without_the_token(server: CliServer) -> None:
    async def go(token: str | None) -> list:
        async with RewardClient(server.address, token=token, timeout_s=30) as c:
            return await c.score("scaled", [{"id": "x", "completion": "abcd"}])

    with pytest.raises(RewardCallError) as info:
        asyncio.run(go("nope"))
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    scores = asyncio.run(go(TOKEN))
    assert [(s.status, s.value) for s in scores] == [(Status.OK, 4.0)]

    denied = run_cli(["list", "--target", server.address])
    assert denied.returncode == 1
    assert "UNAUTHENTICATED" in denied.stderr
    allowed = run_cli(["list", "--target", server.address], env=cli_env({"REFEREE_TOKEN": TOKEN}))
    assert allowed.returncode == 0, allowed.stderr
    assert "scaled" in allowed.stdout
    flag = run_cli(["list", "--target", server.address, "--token", TOKEN])
    assert flag.returncode == 0, flag.stderr
