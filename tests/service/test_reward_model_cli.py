"""`referee serve reward-model` as a real process: scored through `referee score`,
listed, health-checked; and behind the gateway, composed with `math` and `format` from a
real `referee serve verifiers` into one reward, with the reward model's outage reported
as a non-OK status naming the component (never a score of 0)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway_kit import GOOD, NO_FORMAT, WRONG, example_data, start_gateway, wait_health
from grpc_health.v1 import health_pb2
from rm_kit import reference_score, varied_samples
from service_kit import CliServer, run_cli

from referee.rewardsvc.client import RewardClient
from referee.rewardsvc.rm_model import load_reward_model
from referee.rewardsvc.rm_tiny import build_tiny_reward_model
from referee.testing import serve_process
from referee.types import Status

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "llama", "llama", seed=4)


def test_serve_and_score_through_the_cli(llama_dir: Path) -> None:
    rows = varied_samples(6, seed=11) + [{"id": "nothing", "prompt": "hi"}]
    with serve_process(["reward-model", "--model", str(llama_dir), "--max-length", "64"]) as srv:
        assert any("reward model:" in line and "last_token pooling" in line for line in srv.output)
        out = run_cli(["score", "--target", srv.address, "--reward", "reward_model"],
                      input="".join(json.dumps(r) + "\n" for r in rows))
        assert out.returncode == 0, out.stderr
        scores = [json.loads(line) for line in out.stdout.splitlines()]
        listed = run_cli(["list", "--target", srv.address])
        health = run_cli(["health", "--target", srv.address])
    rm = load_reward_model(llama_dir)
    for row, s in zip(rows[:-1], scores, strict=False):
        assert (s["id"], s["status"]) == (row["id"], "OK"), s
        assert s["value"] == pytest.approx(reference_score(rm, row, 64), abs=1e-5)
        assert s["components"]["tokens"] <= 64
    assert (scores[-1]["status"], scores[-1]["value"]) == ("INVALID_INPUT", None)
    assert "scored 7 samples: INVALID_INPUT 1, OK 6" in out.stderr
    assert "reward_model  [model v1+" in listed.stdout
    assert health.stdout.strip() == "SERVING"


def test_bad_model_directory_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli(["serve", "reward-model", "--model", str(tmp_path / "nope"), "--port", "0"])
    assert out.returncode == 2
    assert "no config.json" in out.stderr


def gateway_data(verifiers: str, rm: str) -> dict:
    data = example_data(verifiers, interval_s=0.3, timeout_s=1.0)
    data["upstreams"]["rm"] = {"address": rm, "timeout_s": 2.0}
    data["rewards"]["math_format_rm"] = {
        "description": "0.6 * math + 0.1 * format + 0.3 * reward model; 0 unless the format passes",
        "components": [
            {"name": "math", "upstream": "verifiers", "reward": "math", "weight": 0.6},
            {"name": "format", "upstream": "verifiers", "reward": "format", "weight": 0.1,
             "params": {"strict": False}},
            {"name": "rm", "upstream": "rm", "reward": "reward_model", "weight": 0.3},
        ],
        "combine": "weighted_sum",
        "gates": [{"component": "format", "min": 1.0, "else_value": 0.0}],
        "on_failure": "fail",
    }
    return data


@pytest.mark.asyncio(loop_scope="module")
async def test_gateway_composes_verifiers_and_the_reward_model(
    cli_servers: Callable[..., CliServer], llama_dir: Path
) -> None:
    verifiers = cli_servers(["--workers", "1", "--no-entrypoints"])
    rows = [{"id": "good", "prompt": "What is 2+2?", "completion": GOOD, "reference": "4"},
            {"id": "wrong", "prompt": "What is 2+2?", "completion": WRONG, "reference": "4"},
            {"id": "noformat", "prompt": "What is 2+2?", "completion": NO_FORMAT, "reference": "4"}]
    with serve_process(["reward-model", "--model", str(llama_dir)]) as rm_proc:
        handle = await start_gateway(gateway_data(verifiers.address, rm_proc.address))
        try:
            async with RewardClient(rm_proc.address, timeout_s=30) as direct:
                rm_scores = [s.value for s in await direct.score("reward_model", rows)]
            async with RewardClient(handle.address, timeout_s=30) as client:
                good, wrong, noformat = await client.score("math_format_rm", rows)
                assert [s.status for s in (good, wrong, noformat)] == [Status.OK] * 3, good.reason
                assert good.value == pytest.approx(0.6 + 0.1 + 0.3 * rm_scores[0])
                assert wrong.value == pytest.approx(0.1 + 0.3 * rm_scores[1])
                assert noformat.value == 0.0 and "gate failed: format=0" in noformat.reason
                assert good.components["rm"] == pytest.approx(rm_scores[0])
                assert good.components["rm.raw"] == pytest.approx(rm_scores[0])
                assert good.components["rm.truncated"] == 0.0 and good.components["math"] == 1.0
                await wait_health(handle.address, SERVING)

                rm_proc.stop()
                await wait_health(handle.address, NOT_SERVING, timeout=30, service="upstream/rm")
                [down] = await client.score("math_format_rm", rows[:1])
                assert down.status is Status.UNAVAILABLE and down.value is None
                assert "component rm (rm/reward_model) UNAVAILABLE" in down.reason
                assert "component math" not in down.reason  # the verifiers still answer
                [math] = await client.score("math", rows[:1])
                assert (math.status, math.value) == (Status.OK, 1.0)
        finally:
            await handle.stop(0)
