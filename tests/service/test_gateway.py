"""The gateway in front of a real `referee serve verifiers` process: a composite of
`math` and `format` (weighted sum, format gate, per-component values), routes,
ListRewards, per-component params, streams, health, and a misconfigured upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import pytest_asyncio
from gateway_kit import GOOD, NO_FORMAT, WRONG, example_data, health_status, start_gateway
from grpc_health.v1 import health_pb2
from service_kit import CliServer, metric, request, sample

from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.rewardsvc.server import ServerHandle
from referee.types import Status
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ROWS = [
    {"id": "good", "completion": GOOD, "reference": "4"},
    {"id": "wrong", "completion": WRONG, "reference": "4"},
    {"id": "noformat", "completion": NO_FORMAT, "reference": "4"},
]


@pytest.fixture(scope="module")
def verifiers(cli_servers: Callable[..., CliServer]) -> CliServer:
    return cli_servers(["--workers", "1", "--no-entrypoints"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(verifiers: CliServer) -> AsyncIterator[ServerHandle]:
    handle = await start_gateway(example_data(verifiers.address, interval_s=0.5))
    yield handle
    await handle.stop(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(gateway: ServerHandle) -> AsyncIterator[RewardClient]:
    async with RewardClient(gateway.address, timeout_s=30) as c:
        yield c


async def test_composite_weighs_components_and_applies_the_gate(client: RewardClient) -> None:
    good, wrong, noformat = await client.score("math_with_format", ROWS)
    assert [s.status for s in (good, wrong, noformat)] == [Status.OK] * 3
    assert good.value == pytest.approx(1.0)  # 0.9 * math 1 + 0.1 * format 1
    assert wrong.value == pytest.approx(0.1)  # 0.9 * math 0 + 0.1 * format 1
    assert noformat.value == 0.0  # math is right, but the format gate fails
    assert (good.components["math"], good.components["format"]) == (1.0, 1.0)
    assert good.components["format.tag:answer"] == 1.0  # the component's own parts
    assert (wrong.components["math"], wrong.components["format"]) == (0.0, 1.0)
    assert (noformat.components["math"], noformat.components["format"]) == (1.0, 0.0)
    assert "gate failed: format=0 < 1" in noformat.reason
    assert good.reason == "math=1, format=1"


async def test_a_failed_component_fails_the_sample_naming_it(client: RewardClient) -> None:
    [s] = await client.score("math_with_format", [{"id": "nothing", "reference": "4"}])
    assert s.status is Status.INVALID_INPUT
    assert s.value is None
    assert "component math (verifiers/math) INVALID_INPUT" in s.reason
    assert "component format (verifiers/format) INVALID_INPUT" in s.reason


async def test_composite_response_names_reward_version_and_request(gateway: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        resp = await reward_pb2_grpc.RewardServiceStub(ch).Score(
            request("math_with_format", [sample("a", GOOD, "4")], request_id="r1"), timeout=30)
    assert (resp.reward, resp.request_id) == ("math_with_format", "r1")
    assert resp.version.startswith("1+")
    assert resp.scores[0].status == pb.STATUS_OK


async def test_route_passes_scores_through_unchanged(
    client: RewardClient, verifiers: CliServer
) -> None:
    rows = [*ROWS, {"id": "none", "reference": "4"}]
    via_gateway = await client.score("math", rows)
    async with RewardClient(verifiers.address, timeout_s=30) as direct:
        expected = await direct.score("math", rows)
    key = [(s.id, s.status, s.value, s.reason, s.components) for s in expected]
    assert [(s.id, s.status, s.value, s.reason, s.components) for s in via_gateway] == key
    assert [s.status for s in via_gateway][-1] is Status.INVALID_INPUT


async def test_route_params_are_defaults_under_the_requests(client: RewardClient) -> None:
    row = {"id": "extra", "completion": GOOD + "\nso, four"}
    [lenient] = await client.score("format", [row])  # the config's strict: false
    [strict] = await client.score("format", [row], {"strict": True})
    assert (lenient.value, strict.value) == (1.0, 0.0)


async def test_composite_params_are_per_component(client: RewardClient) -> None:
    row = {"id": "extra", "completion": GOOD + "\nso, four", "reference": "4"}
    [lenient] = await client.score("math_with_format", [row])
    [strict] = await client.score("math_with_format", [row], {"format": {"strict": True}})
    assert lenient.value == pytest.approx(1.0)
    assert strict.value == 0.0 and strict.components["format"] == 0.0


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"answer": {"x": 1}}, "'answer' is not a component of math_with_format"),
        ({"format": 3}, "params.format must be an object"),
        ({"math": {"float_rounding": 99}}, "math_with_format component math: upstream verifiers"),
    ],
)
async def test_bad_composite_params_are_invalid_argument(
    client: RewardClient, params: dict, text: str
) -> None:
    with pytest.raises(RewardCallError) as info:
        await client.score("math_with_format", ROWS[:1], params)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert text in info.value.details


async def test_unknown_reward_lists_the_offered_ones(client: RewardClient) -> None:
    with pytest.raises(RewardCallError) as info:
        await client.score("maths", ROWS[:1])
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "this gateway offers: format, math, math_with_format" in info.value.details


async def test_list_rewards(client: RewardClient) -> None:
    by_name = {r.name: r for r in await client.list_rewards()}
    assert sorted(by_name) == ["format", "math", "math_with_format"]
    composite = by_name["math_with_format"]
    assert composite.kind == "composite"
    assert composite.version.startswith("1+")
    assert "0 unless the format check passes" in composite.description
    assert [(p.name, p.type, p.default_json) for p in composite.params] == [
        ("math", "object", "{}"), ("format", "object", '{"strict": false}')]
    math = by_name["math"]
    assert (math.kind, math.version, math.timeout_s) == ("route", "1", 30.0)
    assert {"float_rounding", "strict", "extract_from"} <= {p.name for p in math.params}
    fmt = {p.name: p for p in by_name["format"].params}
    assert fmt["strict"].default_json == "false"  # the gateway's default, not the verifier's
    assert "tags" in fmt


async def test_score_stream(gateway: ServerHandle) -> None:
    reqs = [request("math_with_format", [sample("a", GOOD, "4")], request_id="one"),
            request("math", [sample("b", "5", "4")], request_id="two")]
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        call = reward_pb2_grpc.RewardServiceStub(ch).ScoreStream(iter(reqs), timeout=30)
        got = {r.request_id: r async for r in call}
    assert sorted(got) == ["one", "two"]
    assert got["one"].scores[0].value == pytest.approx(1.0)
    assert (got["two"].scores[0].status, got["two"].scores[0].value) == (pb.STATUS_OK, 0.0)


async def test_health_reports_the_gateway_and_each_upstream(gateway: ServerHandle) -> None:
    for service in ("", "referee.v1.RewardService", "upstream/verifiers"):
        assert await health_status(gateway.address, service) == SERVING
    assert metric(gateway, "referee_gateway_upstream_up", {"upstream": "verifiers"}) == 1.0
    assert metric(gateway, "referee_samples_total",
                  {"reward": "math_with_format", "status": "OK"}) >= 3


async def test_an_upstream_missing_a_reward_is_not_serving(verifiers: CliServer) -> None:
    data = example_data(verifiers.address)
    data["rewards"]["math_with_format"]["components"][0]["reward"] = "no_such_reward"
    handle = await start_gateway(data)
    try:
        assert await health_status(handle.address) == NOT_SERVING
        async with RewardClient(handle.address, timeout_s=30) as c:
            [s] = await c.score("math_with_format", ROWS[:1])
        # The gateway's mistake: ERROR naming the component, not the caller's INVALID_ARGUMENT.
        assert s.status is Status.ERROR and s.value is None
        assert "component math (verifiers/no_such_reward) ERROR" in s.reason
        assert "unknown reward 'no_such_reward'" in s.reason
    finally:
        await handle.stop(0)
