"""RewardClient against a real verifier server: what comes back, and in which order."""

from __future__ import annotations

import grpc
import pytest
from client_servers import FakeMisbehavingRewardService, Servers, score_calls

from referee import Sample, Status
from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.v1 import reward_pb2 as pb


async def test_scores_come_back_in_input_order_with_statuses(servers: Servers) -> None:
    server = await servers.real()
    samples = [
        {"id": "a", "completion": "1.5"},
        Sample(id="b", completion="nope"),  # INVALID_INPUT (verifier)
        pb.Sample(id="c", completion="boom"),  # ERROR (verifier crashed)
        {"id": "d", "prompt": [{"role": "user", "content": "hi"}]},  # no completion
        Sample(id="e", completion="-2", prompt="p", metadata={"k": [1, 2]}),
        pb.Sample(id="f", completion="0"),
    ]
    async with RewardClient(server.address, timeout_s=30) as client:
        scores = await client.score("echo", samples)

    assert [s.id for s in scores] == ["a", "b", "c", "d", "e", "f"]
    assert [s.status for s in scores] == [
        Status.OK,
        Status.INVALID_INPUT,
        Status.ERROR,
        Status.INVALID_INPUT,
        Status.OK,
        Status.OK,
    ]
    assert [s.value for s in scores] == [1.5, None, None, None, -2.0, 0.0]
    assert "not a number" in scores[1].reason
    assert "RuntimeError" in scores[2].reason
    assert "no completion" in scores[3].reason
    assert scores[0].reason == "echo a"


async def test_params_reach_the_verifier(servers: Servers) -> None:
    server = await servers.real()
    async with RewardClient(server.address, timeout_s=30) as client:
        scores = await client.score("echo", [{"completion": "1"}], {"offset": 10, "label": "L"})
    assert scores[0].value == 11.0 and scores[0].reason == "L "


async def test_empty_batch_makes_no_call(servers: Servers) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=5) as client:
        assert await client.score("echo", []) == []
    assert fake.calls == 0


async def test_failed_scores_never_carry_a_value(servers: Servers) -> None:
    # The server puts 0.7 in `value` next to an ERROR status; the client must drop it.
    fake = FakeMisbehavingRewardService(default="error_with_value")
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=5) as client:
        scores = await client.score("echo", [{"id": "x", "completion": "1"}])
    assert scores[0].status is Status.ERROR and scores[0].value is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"completion": 5}, ["sample 2", "completion"]),
        ({"completion": "1", "answer": "x"}, ["sample 2", "answer"]),
        ({"completion": "1", "metadata": [1]}, ["sample 2", "metadata"]),
        ({"completion": "1", "prompt": [{"role": 1}]}, ["sample 2", "prompt"]),
        ("just text", ["sample 2"]),
        (7, ["sample 2"]),
    ],
)
async def test_malformed_sample_raises_before_any_call(
    servers: Servers, bad: object, words: list[str]
) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    samples = [{"completion": "1"}, Sample(completion="2"), bad, {"completion": "3"}]
    async with RewardClient(server.address, timeout_s=5) as client:
        with pytest.raises(ValueError) as err:
            await client.score("echo", samples)  # type: ignore[arg-type]
    for word in words:
        assert word in str(err.value)
    assert fake.calls == 0


async def test_unknown_reward_or_param_is_a_call_error(servers: Servers) -> None:
    server = await servers.real()
    async with RewardClient(server.address, timeout_s=30) as client:
        with pytest.raises(RewardCallError) as err:
            await client.score("no-such-reward", [{"completion": "1"}])
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-reward" in err.value.details and "echo" in err.value.details
        with pytest.raises(RewardCallError) as err:
            await client.score("echo", [{"completion": "1"}], {"ofset": 1})
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "ofset" in err.value.details
    assert score_calls(server, "INVALID_ARGUMENT") == 2  # one attempt each, no retries


async def test_list_rewards_describes_names_kinds_versions_and_params(servers: Servers) -> None:
    server = await servers.real(pool={"timeout_s": 4.0})
    async with RewardClient(server.address, timeout_s=30) as client:
        infos = {r.name: r for r in await client.list_rewards()}

    assert sorted(infos) == ["echo", "needs", "slow"]
    echo, needs, slow = infos["echo"], infos["needs"], infos["slow"]
    assert (echo.kind, echo.version) == ("rule", "3")
    assert (slow.kind, slow.version) == ("custom", "1")
    assert (needs.kind, needs.version) == ("judge", "7")
    assert echo.description.startswith("Scores a numeric completion")
    assert echo.timeout_s == 4.0
    params = {p.name: p for p in echo.params}
    assert [p.name for p in echo.params] == ["offset", "label"]
    assert (params["offset"].type, params["offset"].default_json, params["offset"].required) == (
        "number",
        "0.0",
        False,
    )
    assert (params["label"].type, params["label"].default_json) == ("string", '"echo"')
    assert params["offset"].description == "added to every value"
    target, strict = needs.params
    assert (target.name, target.type, target.required, target.default_json) == (
        "target",
        "integer",
        True,
        "",
    )
    assert (strict.name, strict.type, strict.required, strict.default_json) == (
        "strict",
        "boolean",
        False,
        "true",
    )


@pytest.mark.parametrize(
    "bad",
    [Sample(completion="1", metadata={"when": object()}), Sample(completion=5)],  # type: ignore[arg-type]
    ids=["metadata-not-json", "completion-not-str"],
)
async def test_malformed_typed_sample_names_its_index(servers: Servers, bad: Sample) -> None:
    fake = FakeMisbehavingRewardService()
    server = await servers.fake(fake)
    async with RewardClient(server.address, timeout_s=5) as client:
        with pytest.raises(ValueError, match="sample 1 "):
            await client.score("echo", [Sample(completion="1"), bad])
    assert fake.calls == 0
