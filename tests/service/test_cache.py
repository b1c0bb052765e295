"""The result cache: keyed by (reward, version, params, sample content), never by id;
its hits are visible on the metrics side port."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from service_kit import request, sample, scrape, status_names

from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(inproc_servers: Any) -> ServerHandle:
    return await inproc_servers(pool=VerifierPoolConfig(workers=1), metrics_port=0)


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: ServerHandle) -> AsyncIterator[reward_pb2_grpc.RewardServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield reward_pb2_grpc.RewardServiceStub(ch)


def fresh(n: int, prefix: str = "s") -> list[Any]:
    """Samples no other test has sent (the cache lives as long as the module's server)."""
    tag = uuid.uuid4().hex
    return [sample(f"{prefix}{i}", f"{tag}-{'x' * i}", reference="r", k=i) for i in range(n)]


async def hits(server: ServerHandle) -> float:
    assert server.metrics_port
    return await asyncio.to_thread(scrape, server.metrics_port, "referee_cache_hits_total")


async def test_repeat_is_served_from_the_cache(server: ServerHandle, stub: Any) -> None:
    samples = fresh(4)
    h0 = await hits(server)
    first = await stub.Score(request("scaled", samples, {"scale": 2.0}), timeout=30)
    assert status_names(first) == ["STATUS_OK"] * 4
    assert [s.cached for s in first.scores] == [False] * 4
    assert all(s.cost_s > 0 for s in first.scores)
    assert await hits(server) == h0

    second = await stub.Score(request("scaled", samples, {"scale": 2.0}), timeout=30)
    assert [s.cached for s in second.scores] == [True] * 4
    assert [s.cost_s for s in second.scores] == [0.0] * 4
    assert [s.value for s in second.scores] == [s.value for s in first.scores]
    assert [s.id for s in second.scores] == [s.id for s in first.scores]
    assert status_names(second) == ["STATUS_OK"] * 4
    assert await hits(server) == h0 + 4


async def test_other_params_or_reward_miss(server: ServerHandle, stub: Any) -> None:
    samples = fresh(3)
    await stub.Score(request("scaled", samples, {"scale": 2.0}), timeout=30)
    other_params = await stub.Score(request("scaled", samples, {"scale": 3.0}), timeout=30)
    assert [s.cached for s in other_params.scores] == [False] * 3
    assert [s.value for s in other_params.scores] == [3.0 * (33 + i) for i in range(3)]
    # A default filled in is the same key as the same value sent explicitly...
    explicit = await stub.Score(request("scaled", samples, {"scale": 1.0}), timeout=30)
    implicit = await stub.Score(request("scaled", samples), timeout=30)
    assert [s.cached for s in explicit.scores] == [False] * 3
    assert [s.cached for s in implicit.scores] == [True] * 3
    # ...but another reward with the same function and params is not.
    other_reward = await stub.Score(request("scaled2", samples, {"scale": 2.0}), timeout=30)
    assert [s.cached for s in other_reward.scores] == [False] * 3
    assert [s.value for s in other_reward.scores] == [2.0 * (33 + i) for i in range(3)]


async def test_same_content_other_ids_hit(server: ServerHandle, stub: Any) -> None:
    samples = fresh(3, prefix="first-")
    await stub.Score(request("scaled", samples), timeout=30)
    renamed = [sample(f"second-{i}", s.completion, s.reference, k=i) for i, s in enumerate(samples)]
    resp = await stub.Score(request("scaled", renamed), timeout=30)
    assert [s.cached for s in resp.scores] == [True] * 3
    assert [s.id for s in resp.scores] == ["second-0", "second-1", "second-2"]
    # Metadata is part of the key.
    changed = [sample("third", samples[0].completion, samples[0].reference, k=99)]
    resp = await stub.Score(request("scaled", changed), timeout=30)
    assert [s.cached for s in resp.scores] == [False]


async def test_invalid_input_is_cached_errors_are_not(server: ServerHandle, stub: Any) -> None:
    tag = uuid.uuid4().hex
    bad = [sample("p", tag)]  # picky: no metadata.level
    boom = [sample("b", "boom", reference=tag)]
    for _ in range(2):
        picky = await stub.Score(request("picky", bad), timeout=30)
        failed = await stub.Score(request("boom", boom), timeout=30)
    assert status_names(picky) == ["STATUS_INVALID_INPUT"] and picky.scores[0].cached
    assert status_names(failed) == ["STATUS_ERROR"] and not failed.scores[0].cached


async def test_missing_completion_is_not_a_cache_hit(server: ServerHandle, stub: Any) -> None:
    h0 = await hits(server)
    samples = [*fresh(2), sample("none", None)]
    await stub.Score(request("scaled", samples), timeout=30)
    assert await hits(server) == h0
    resp = await stub.Score(request("scaled", samples), timeout=30)
    assert [s.cached for s in resp.scores] == [True, True, False]
    assert await hits(server) == h0 + 2
