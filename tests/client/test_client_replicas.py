"""Several replicas: chunks spread across them, and a replica that goes away is avoided."""

from __future__ import annotations

import asyncio

import pytest
from client_servers import (
    FakeMisbehavingRewardService,
    Servers,
    dead_address,
    score_calls,
    wait_until,
)

from referee import Status
from referee.rewardsvc.client import RewardClient

pytestmark = pytest.mark.timeout(60)
BATCH = [{"id": str(i), "completion": str(i)} for i in range(1000)]


def assert_all_ok(scores: list, n: int = len(BATCH)) -> None:
    assert [s.status for s in scores] == [Status.OK] * n, {s.reason for s in scores}
    assert [s.value for s in scores] == [float(i) for i in range(n)]


async def test_chunks_spread_across_replicas_then_fail_over(servers: Servers) -> None:
    a = await servers.real()
    b = await servers.real()
    async with RewardClient([a.address, b.address], timeout_s=30, chunk_size=64) as client:
        assert_all_ok(await client.score("echo", BATCH))
        first_a, first_b = score_calls(a), score_calls(b)
        assert first_a + first_b == 16
        assert first_a >= 4 and first_b >= 4, (first_a, first_b)

        await servers.stop(a)
        for _ in range(3):
            assert_all_ok(await client.score("echo", BATCH))
        assert score_calls(b) == first_b + 3 * 16


async def test_comma_separated_targets(servers: Servers) -> None:
    fakes = [FakeMisbehavingRewardService(), FakeMisbehavingRewardService()]
    a, b = [await servers.fake(f) for f in fakes]
    async with RewardClient(f" {a.address} ,{b.address},", timeout_s=30, chunk_size=100) as client:
        assert client.targets == [a.address, b.address]
        assert_all_ok(await client.score("echo", BATCH))
    assert fakes[0].calls > 0 and fakes[1].calls > 0
    assert fakes[0].calls + fakes[1].calls == 10


async def test_a_replica_that_never_answered_is_skipped(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService()
    live = await servers.fake(fake)
    async with RewardClient([dead_address(), live.address], timeout_s=30, chunk_size=50) as client:
        for _ in range(3):
            assert_all_ok(await client.score("echo", BATCH))
    assert fake.calls == 3 * 20


async def test_calls_in_flight_on_a_replica_that_stops_move_to_another(servers: Servers) -> None:
    doomed, healthy = FakeMisbehavingRewardService(default="hang"), FakeMisbehavingRewardService()
    a = await servers.fake(doomed)
    b = await servers.fake(healthy)
    async with RewardClient([a.address, b.address], timeout_s=30, chunk_size=100) as client:
        call = asyncio.ensure_future(client.score("echo", BATCH))
        await wait_until(lambda: doomed.calls >= 1)
        await servers.stop(a)
        scores = await asyncio.wait_for(call, 20)
    assert_all_ok(scores)
    assert healthy.calls == 10  # every chunk answered by the healthy replica
