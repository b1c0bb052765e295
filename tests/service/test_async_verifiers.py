"""Async verifiers run on the event loop, concurrently, with the same statuses,
time limit and cache as pooled ones."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from service_kit import request, sample, status_names

from referee.rewardsvc.calling import is_async
from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")
SPEC = "async_fixture_verifiers:await_len"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(inproc_servers: Any) -> ServerHandle:
    return await inproc_servers(specs=[SPEC], pool=VerifierPoolConfig(workers=1))


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: ServerHandle) -> AsyncIterator[reward_pb2_grpc.RewardServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield reward_pb2_grpc.RewardServiceStub(ch)


async def test_detected_as_async() -> None:
    import async_fixture_verifiers as fx

    assert is_async(fx.await_len)


async def test_samples_are_awaited_concurrently(stub: Any) -> None:
    import async_fixture_verifiers as fx

    fx.IN_FLIGHT["peak"] = 0
    samples = [sample(f"s{i}", "x" * (i + 1) + f"-{time.time_ns()}") for i in range(40)]
    t0 = time.monotonic()
    resp = await stub.Score(request("await_len", samples, {"delay_s": 0.2}), timeout=30)
    elapsed = time.monotonic() - t0
    assert status_names(resp) == ["STATUS_OK"] * 40
    assert [s.value for s in resp.scores] == [float(len(s.completion)) for s in samples]
    assert elapsed < 4.0, f"40 x 0.2 s awaited one after another ({elapsed:.1f}s)"
    assert fx.IN_FLIGHT["peak"] > 1  # the verifier ran in this process, overlapping


async def test_failures_are_statuses_and_hangs_time_out(stub: Any, server: ServerHandle) -> None:
    samples = [sample("ok", "abc"), sample("hang", "hang"), sample("bad", "bad"), sample("bug", "bug")]
    t0 = time.monotonic()
    resp = await stub.Score(request("await_len", samples), timeout=30)
    assert time.monotonic() - t0 < 1.0 + 1.0
    assert status_names(resp) == ["STATUS_OK", "STATUS_TIMEOUT", "STATUS_INVALID_INPUT", "STATUS_ERROR"]
    assert resp.scores[0].value == 3.0
    assert "1s per-sample limit" in resp.scores[1].reason
    assert "metadata.thing" in resp.scores[2].reason
    assert "KeyError" in resp.scores[3].reason
    again = await stub.Score(request("await_len", [sample("x", "xy")]), timeout=30)
    assert status_names(again) == ["STATUS_OK"]


async def test_invalid_params_refuse_the_request(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(request("await_len", [sample("a", "q")], {"delay_s": -1.0}), timeout=30)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "delay_s must be >= 0" in err.value.details()
