"""Large batches split into chunks by count and by encoded size; order survives."""

from __future__ import annotations

import pytest
from client_servers import FakeMisbehavingRewardService, Servers, score_calls

from referee import Status
from referee.rewardsvc.client import RewardClient


async def test_chunks_by_count_keep_input_order(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    samples = [{"id": f"s{i}", "completion": str(i)} for i in range(1000)]
    async with RewardClient(server.address, timeout_s=30, chunk_size=64) as client:
        scores = await client.score("echo", samples)

    assert fake.calls == 16  # ceil(1000 / 64)
    assert all(0 < len(r.samples) <= 64 for r in fake.requests)
    sent = sorted(s.id for r in fake.requests for s in r.samples)
    assert sent == sorted(f"s{i}" for i in range(1000))  # each sample sent exactly once
    assert [s.id for s in scores] == [f"s{i}" for i in range(1000)]
    assert [s.value for s in scores] == [float(i) for i in range(1000)]


async def test_chunks_by_count_against_a_real_server(servers: Servers) -> None:
    server = await servers.real()
    samples = [{"completion": str(i)} for i in range(1000)]
    async with RewardClient(
        server.address, timeout_s=60, chunk_size=64, max_concurrent_chunks=4
    ) as client:
        scores = await client.score("echo", samples)
    assert [s.value for s in scores] == [float(i) for i in range(1000)]
    assert all(s.status is Status.OK for s in scores)
    assert score_calls(server) == 16


async def test_chunks_by_encoded_size(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    limit = 8 * 1024
    samples = [{"id": str(i), "completion": str(i), "reference": "x" * 500} for i in range(60)]
    async with RewardClient(
        server.address, timeout_s=30, chunk_size=1000, max_message_bytes=limit
    ) as client:
        scores = await client.score("echo", samples)

    assert fake.calls > 1  # 60 samples of ~510 bytes do not fit 8 KiB
    assert all(r.ByteSize() <= limit for r in fake.requests)
    assert [s.value for s in scores] == [float(i) for i in range(60)]


async def test_a_sample_over_the_message_limit_raises_before_any_call(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    samples = [{"id": "small", "completion": "1"}, {"id": "huge", "completion": "1" * 10_000}]
    async with RewardClient(server.address, timeout_s=5, max_message_bytes=8 * 1024) as client:
        with pytest.raises(ValueError, match="'huge'.*byte message limit"):
            await client.score("echo", samples)
    assert fake.calls == 0
