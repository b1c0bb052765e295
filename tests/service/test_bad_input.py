"""Malformed calls get the right gRPC code and a message naming the problem; malformed
samples get a per-sample status; and after every one the server still scores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from service_kit import CUSTOM, request, sample, status_names

from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_BATCH = 8
MAX_REQUEST_BYTES = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(inproc_servers: Any) -> ServerHandle:
    return await inproc_servers(
        ["builtin", CUSTOM],
        VerifierPoolConfig(workers=1, max_batch_samples=MAX_BATCH),
        max_request_bytes=MAX_REQUEST_BYTES,
    )


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: ServerHandle) -> AsyncIterator[reward_pb2_grpc.RewardServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        s = reward_pb2_grpc.RewardServiceStub(ch)
        yield s
        # Whatever the test did, the server still answers a good request.
        resp = await s.Score(request("scaled", [sample("good", "abcd")]), timeout=30)
        assert status_names(resp) == ["STATUS_OK"]
        assert resp.scores[0].value == 4.0


async def call_error(stub: Any, req: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Score(req, timeout=30)
    return info.value


async def test_unknown_reward_names_it_and_lists_the_offered(stub: Any) -> None:
    e = await call_error(stub, request("no_such_reward", [sample("1", "x")]))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown reward 'no_such_reward'" in e.details()
    for offered in ("exact", "json", "scaled", "sleepy"):
        assert offered in e.details()


async def test_unknown_param_is_named(stub: Any) -> None:
    e = await call_error(stub, request("scaled", [sample("1", "x")], {"sclae": 2}))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'sclae'" in e.details()
    assert "it accepts: scale, label" in e.details()


async def test_wrong_param_type_is_named(stub: Any) -> None:
    e = await call_error(stub, request("scaled", [sample("1", "x")], {"scale": "big"}))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "param 'scale' must be number" in e.details()
    e = await call_error(stub, request("exact", [sample("1", "x", "x")], {"strip": "yes"}))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "param 'strip' must be boolean" in e.details()


async def test_missing_completion_costs_only_that_sample(stub: Any) -> None:
    resp = await stub.Score(
        request("exact", [sample("a", "4", "4"), sample("b", None, "4"), sample("c", "5", "4")]),
        timeout=30,
    )
    assert [s.id for s in resp.scores] == ["a", "b", "c"]
    assert status_names(resp) == ["STATUS_OK", "STATUS_INVALID_INPUT", "STATUS_OK"]
    assert [resp.scores[0].value, resp.scores[2].value] == [1.0, 0.0]
    assert resp.scores[1].reason == "sample 1 (id 'b') has no completion"


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ("not a schema", "metadata.schema must be an object, got str"),
        ({"type": "no-such-type"}, "metadata.schema is invalid"),
    ],
)
async def test_malformed_metadata_is_invalid_input_naming_the_field(
    stub: Any, schema: Any, says: str
) -> None:
    resp = await stub.Score(
        request("json", [sample("ok", '{"a": 1}'), sample("bad", '{"a": 1}', schema=schema)]),
        timeout=30,
    )
    assert status_names(resp) == ["STATUS_OK", "STATUS_INVALID_INPUT"]
    assert resp.scores[0].value == 1.0
    assert says in resp.scores[1].reason
    assert resp.scores[1].value == 0.0  # no value on the wire for a non-OK score


async def test_invalid_input_raised_by_a_verifier(stub: Any) -> None:
    resp = await stub.Score(
        request("picky", [sample("x", "c", level=3), sample("y", "c", level="high")]), timeout=30
    )
    assert status_names(resp) == ["STATUS_OK", "STATUS_INVALID_INPUT"]
    assert resp.scores[0].value == 3.0
    assert resp.scores[1].reason == "metadata.level must be a number, got str"


async def test_oversized_request_is_resource_exhausted(stub: Any) -> None:
    big = "x" * (2 * MAX_REQUEST_BYTES)
    e = await call_error(stub, request("scaled", [sample("big", big)]))
    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in e.details()


async def test_too_many_samples_is_invalid_argument(stub: Any) -> None:
    e = await call_error(
        stub, request("scaled", [sample(str(i), "x") for i in range(MAX_BATCH + 1)])
    )
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"request has {MAX_BATCH + 1} samples; at most {MAX_BATCH}" in e.details()
    resp = await stub.Score(
        request("scaled", [sample(str(i), "x") for i in range(MAX_BATCH)]), timeout=30
    )
    assert status_names(resp) == ["STATUS_OK"] * MAX_BATCH


async def test_verifier_exception_is_error_naming_it(stub: Any) -> None:
    resp = await stub.Score(request("boom", [sample("1", "fine"), sample("2", "boom")]), timeout=30)
    assert status_names(resp) == ["STATUS_OK", "STATUS_ERROR"]
    assert resp.scores[0].value == 4.0
    reason = resp.scores[1].reason
    assert "verifier 'boom' raised RuntimeError: kaboom in the fixture" in reason
    assert "fixture_verifiers.py:" in reason


async def test_non_result_return_is_error(stub: Any) -> None:
    resp = await stub.Score(request("not_result", [sample("1", "x")]), timeout=30)
    assert status_names(resp) == ["STATUS_ERROR"]
    assert resp.scores[0].reason == "verifier 'not_result' returned float, not a Result"


async def test_check_params_rejection_is_invalid_argument(stub: Any) -> None:
    e = await call_error(stub, request("checked", [sample("1", "x")], {"label": "bad"}))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "params: label 'bad' is not allowed"
