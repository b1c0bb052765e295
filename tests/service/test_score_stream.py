"""ScoreStream: many batches over one stream, matched by request_id."""

from __future__ import annotations

import time

import grpc
import pytest
from service_kit import request, sample, status_names

from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_responses_match_their_requests(custom_server: ServerHandle) -> None:
    # Earlier requests sleep longer, so responses may overtake each other.
    reqs = [
        request(
            "sleepy",
            [sample(f"r{n}-{i}", "x" * (n + i), sleep_s=0.05 * (4 - n)) for i in range(n + 1)],
            request_id=f"req-{n}",
        )
        for n in range(5)
    ]
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        call = reward_pb2_grpc.RewardServiceStub(ch).ScoreStream(iter(reqs), timeout=60)
        responses = [r async for r in call]
        assert await call.code() is grpc.StatusCode.OK
    assert sorted(r.request_id for r in responses) == [f"req-{n}" for n in range(5)]
    for resp in responses:
        n = int(resp.request_id.split("-")[1])
        assert resp.reward == "sleepy" and resp.version == "1"
        assert [s.id for s in resp.scores] == [f"r{n}-{i}" for i in range(n + 1)]
        assert status_names(resp) == ["STATUS_OK"] * (n + 1)
        assert [s.value for s in resp.scores] == [float(n + i) for i in range(n + 1)]


async def test_bad_request_ends_the_stream_naming_it(custom_server: ServerHandle) -> None:
    reqs = [
        request("scaled", [sample("a", "abc")], request_id="good-1"),
        request("no_such_reward", [sample("b", "abc")], request_id="bad-2"),
    ]
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        call = stub.ScoreStream(iter(reqs), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for resp in call:
                assert resp.request_id == "good-1"
                assert [s.value for s in resp.scores] == [3.0]
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown reward 'no_such_reward'" in info.value.details()
        assert "request_id 'bad-2'" in info.value.details()
        # The server is fine afterwards, on the same channel.
        resp = await stub.Score(request("scaled", [sample("c", "abcd")]), timeout=30)
        assert resp.scores[0].value == 4.0


async def test_stream_of_per_sample_failures_stays_open(custom_server: ServerHandle) -> None:
    reqs = [
        request("boom", [sample("x", "boom"), sample("y", "ok")], request_id="1"),
        request("scaled", [sample("z", None)], request_id="2"),
        request("scaled", [sample("w", "abcdef")], request_id="3"),
    ]
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        call = reward_pb2_grpc.RewardServiceStub(ch).ScoreStream(iter(reqs), timeout=60)
        by_id = {r.request_id: r async for r in call}
    assert status_names(by_id["1"]) == ["STATUS_ERROR", "STATUS_OK"]
    assert status_names(by_id["2"]) == ["STATUS_INVALID_INPUT"]
    assert by_id["3"].scores[0].value == 6.0


async def test_unexpected_server_error_ends_the_stream_promptly(
    custom_server: ServerHandle,
) -> None:
    reqs = [request("checked", [sample("a", "abc")], {"label": "explode"}, request_id="x")]
    async with grpc.aio.insecure_channel(custom_server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.ScoreStream(iter(reqs), timeout=20):
                pass
        # An error, not a stream left hanging until the client's deadline.
        assert info.value.code() is grpc.StatusCode.UNKNOWN, info.value
        assert "check_params blew up" in info.value.details()
        assert time.monotonic() - t0 < 10
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(reqs[0], timeout=20)
        assert info.value.code() is grpc.StatusCode.UNKNOWN
        assert "check_params blew up" in info.value.details()
