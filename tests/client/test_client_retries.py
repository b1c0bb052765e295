"""Retries, backoff, deadlines and auth: which failures are retried, and how long for."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from client_servers import (
    FakeMisbehavingRewardService,
    Servers,
    dead_address,
    score_calls,
    wait_until,
)

from referee import Status
from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.v1 import reward_pb2 as pb

ONE = [{"id": "a", "completion": "1"}]
THREE = [{"id": str(i), "completion": str(i)} for i in range(3)]
UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
pytestmark = pytest.mark.timeout(60)


# CANCELLED is what a replica that is shutting down sends for calls it had just accepted.
@pytest.mark.parametrize("code", [UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_retried_on_another_attempt_twice_then_ok(
    servers: Servers, code: grpc.StatusCode
) -> None:
    fake = FakeMisbehavingRewardService([code, code])
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=20, backoff_max_s=0.1) as client:
        scores = await client.score("echo", THREE)
    assert [(s.status, s.value) for s in scores] == [
        (Status.OK, 0.0),
        (Status.OK, 1.0),
        (Status.OK, 2.0),
    ]
    assert fake.calls == 3


async def test_resource_exhausted_backs_off_no_longer_than_backoff_max(servers: Servers) -> None:
    # backoff_base_s alone would ask for sleeps of 10 s and more; backoff_max_s caps them.
    fake = FakeMisbehavingRewardService([EXHAUSTED] * 3)
    server = await servers.fake(fake)
    async with RewardClient(
        server.address, timeout_s=20, backoff_base_s=10.0, backoff_max_s=0.1
    ) as client:
        start = time.monotonic()
        scores = await client.score("echo", ONE)
        elapsed = time.monotonic() - start
    assert scores[0].status is Status.OK and fake.calls == 4
    assert elapsed < 3.0


async def test_a_busy_server_is_retried_after_backoff(servers: Servers) -> None:
    server = await servers.real(max_concurrency=1)
    async with RewardClient(server.address, timeout_s=30, backoff_max_s=0.2) as client:
        busy = asyncio.ensure_future(client.score("slow", ONE, {"seconds": 1.0}))
        inflight = server.metrics.registry
        await wait_until(lambda: inflight.get_sample_value("referee_inflight_requests") == 1)
        scores = await client.score("echo", ONE)
        assert scores[0].status is Status.OK and scores[0].value == 1.0
        assert (await busy)[0].value == 1.0
    refused = server.metrics.registry.get_sample_value(
        "referee_rejected_total", {"reason": "concurrency"}
    )
    assert refused and refused >= 1  # the second call really was turned away first


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_errors_retrying_cannot_fix_raise_at_once(
    servers: Servers, code: grpc.StatusCode
) -> None:
    fake = FakeMisbehavingRewardService([code], default="ok")
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=20) as client:
        with pytest.raises(RewardCallError) as err:
            await client.score("echo", ONE)
    assert err.value.code is code
    assert err.value.target == server.address and f"scripted {code.name}" in err.value.details
    assert fake.calls == 1


@pytest.mark.parametrize(
    ("action", "words"), [("drop_last", "got 2 scores"), ("reverse", "out of order")]
)
async def test_a_server_breaking_the_contract_is_a_call_error(
    servers: Servers, action: str, words: str
) -> None:
    fake = FakeMisbehavingRewardService(default=action)
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=20) as client:
        with pytest.raises(RewardCallError, match=words):
            await client.score("echo", THREE)


async def test_a_call_error_cancels_the_other_chunks(servers: Servers) -> None:
    def script(req: pb.ScoreRequest) -> grpc.StatusCode | str:
        return grpc.StatusCode.INVALID_ARGUMENT if req.samples[0].completion == "0" else "hang"

    fake = FakeMisbehavingRewardService(default=script)
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=30, chunk_size=1) as client:
        with pytest.raises(RewardCallError):
            await client.score("echo", THREE)
        # The chunks still hanging on the server are not left running until their deadline.
        await asyncio.wait_for(fake.cancelled.wait(), 10)


async def test_slow_verifier_gives_timeout_statuses_at_the_deadline(servers: Servers) -> None:
    # The server's own per-sample limit (4 s) is longer than the client's deadline (1 s).
    server = await servers.real(pool={"timeout_s": 4.0})
    async with RewardClient(server.address, timeout_s=1.0, chunk_size=1) as client:
        start = time.monotonic()
        scores = await client.score(
            "slow", [{"id": "x", "completion": "1"}, {"id": "y", "completion": "2"}]
        )
        elapsed = time.monotonic() - start
    assert [(s.id, s.status, s.value) for s in scores] == [
        ("x", Status.TIMEOUT, None),
        ("y", Status.TIMEOUT, None),
    ]
    assert "DEADLINE_EXCEEDED" in scores[0].reason
    assert 0.9 < elapsed < 3.0


async def test_per_call_timeout_overrides_the_client_default(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService(default="hang")
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=60) as client:
        start = time.monotonic()
        scores = await client.score("echo", THREE, timeout_s=0.5)
        elapsed = time.monotonic() - start
    assert {(s.status, s.value) for s in scores} == {(Status.TIMEOUT, None)}
    assert elapsed < 3.0


async def test_all_replicas_down_gives_unavailable_statuses_within_the_deadline() -> None:
    async with RewardClient(
        [dead_address(), dead_address()], timeout_s=1.0, backoff_max_s=0.2
    ) as client:
        start = time.monotonic()
        scores = await client.score("echo", THREE)
        elapsed = time.monotonic() - start
    assert [s.id for s in scores] == ["0", "1", "2"]
    assert {(s.status, s.value) for s in scores} == {(Status.UNAVAILABLE, None)}
    assert "UNAVAILABLE" in scores[0].reason
    assert elapsed < 3.0


async def test_list_rewards_with_every_replica_down_raises_a_call_error() -> None:
    async with RewardClient(dead_address(), timeout_s=1.0, backoff_max_s=0.2) as client:
        start = time.monotonic()
        with pytest.raises(RewardCallError) as err:
            await client.list_rewards()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 3.0


async def test_token_is_sent_and_checked(servers: Servers) -> None:
    server = await servers.real(token="s3cret")
    async with RewardClient(server.address, token="s3cret", timeout_s=30) as client:
        assert (await client.score("echo", ONE))[0].value == 1.0
        assert "echo" in [r.name for r in await client.list_rewards()]
    for token in (None, "wrong"):
        async with RewardClient(server.address, token=token, timeout_s=30) as client:
            with pytest.raises(RewardCallError) as err:
                await client.score("echo", ONE)
            assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(RewardCallError) as err:
                await client.list_rewards()
            assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert score_calls(server, "UNAUTHENTICATED") == 2  # one attempt per call, no retries


async def test_jitter_is_bounded_by_backoff_max() -> None:
    async with RewardClient(dead_address(), backoff_base_s=0.05, backoff_max_s=0.3) as client:
        for attempt in (0, 1, 3, 10, 60, 1100, 10**6):
            waits = [client._set.jitter(attempt) for _ in range(200)]
            assert all(0.0 <= w <= 0.3 for w in waits), attempt
        assert max(client._set.jitter(0) for _ in range(200)) <= 0.05
        # A replica that has been down for a long time is still retried within the cap.
        replica = client._set.replicas[0]
        replica.failures = 5000
        before = time.monotonic()
        client._set.mark_down(replica)
        assert replica.down_until <= time.monotonic() + 0.3 and replica.down_until >= before
